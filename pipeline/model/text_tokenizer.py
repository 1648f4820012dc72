"""Text tokenizers: load a real HF tokenizer (Llama-2) from a local dir or ``gs://``, or build an
offline demo tokenizer whose base vocabulary ends in 256 reserved action tokens (Llama-2 layout).

No hub access anywhere: ``gs://`` directories are copied to a local temp dir first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.prompt import format_prompt

__all__ = [
    "PAD_TOKEN",
    "build_demo_tokenizer",
    "load_text_tokenizer",
    "save_text_tokenizer",
]

PAD_TOKEN = "<PAD>"
_DEMO_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama-2
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
)


def load_text_tokenizer(url: str) -> Any:
    """Load an HF tokenizer directory (``AutoTokenizer``) from a local path or ``gs://`` URL.

    Adds ``<PAD>`` as a special token when the tokenizer has no pad token (OpenVLA: Llama-2 gets
    ``<PAD>`` -> id 32000). Raises UserError when the directory has no tokenizer files.
    """
    from transformers import AutoTokenizer

    if not fs.exists(url):
        raise UserError(f"{url}: tokenizer directory not found")
    # Only the tokenizer's own files are read (from a temp copy): a model config.json beside them
    # (e.g. OpenVLA's, with remote-code auto_map entries) must never reach AutoTokenizer.
    tmp = tempfile.mkdtemp(prefix="vla-tok-")
    try:
        for name in _TOKENIZER_FILES:
            src = fs.join(url, name)
            if fs.exists(src):
                fs.copy_file(src, os.path.join(tmp, name))
        if not any(os.path.exists(os.path.join(tmp, n)) for n in ("tokenizer.json", "tokenizer.model")):
            raise UserError(f"{url}: no tokenizer.json or tokenizer.model found; pass an HF tokenizer dir")
        try:
            tok = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        except (OSError, ValueError, ImportError) as e:
            raise UserError(f"{url}: cannot load the tokenizer ({str(e).splitlines()[0][:200]}); "
                            "a dir with only tokenizer.model needs the sentencepiece package") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    return tok


def save_text_tokenizer(tokenizer: Any, url: str) -> None:
    """Save ``tokenizer`` (HF ``save_pretrained`` files) into a local or ``gs://`` directory."""
    if not fs.is_remote(url):
        os.makedirs(url, exist_ok=True)
        tokenizer.save_pretrained(url)
        return
    with tempfile.TemporaryDirectory(prefix="vla-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        fs.copy_dir(tmp, url)


def build_demo_tokenizer(
    instructions: Iterable[str],
    out_dir: str | None = None,
    *,
    text_vocab_size: int = 512,
    n_action_tokens: int = 256,
) -> Any:
    """Train a small byte-level BPE offline on ``instructions`` and wrap it as a
    ``PreTrainedTokenizerFast`` laid out like Llama-2:

    - ids 0/1/2 = ``<unk>``/``<s>``/``</s>``; BOS is prepended automatically (``add_special_tokens``);
    - base vocab = ``text_vocab_size`` BPE entries followed by ``n_action_tokens`` reserved entries
      ``<act_000>``.. (so ``tokenizer.vocab_size == text_vocab_size + n_action_tokens`` and action ids
      are the last 256 base ids, exactly like Llama-2's 31744..31999);
    - ``<PAD>`` is an added special token right after the base vocab (id ``vocab_size``).

    Deterministic: the same instructions and sizes give the same vocabulary. The training texts
    include the prompt template so its words become single tokens. If ``out_dir`` (local or gs://)
    is given, the tokenizer files are saved there.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = sorted({str(s) for s in instructions})
    corpus = [format_prompt(t) for t in texts] + texts
    if not corpus:
        corpus = [format_prompt("pick up the object")]
    min_vocab = 256 + len(_DEMO_SPECIALS) + 1
    if text_vocab_size < min_vocab:
        raise ValueError(f"build_demo_tokenizer.text_vocab_size={text_vocab_size}: need >= {min_vocab}")

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=text_vocab_size,
        special_tokens=list(_DEMO_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)

    # Pad the BPE vocab to exactly text_vocab_size, then append the reserved action entries.
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    i = 0
    while len(vocab) < text_vocab_size:
        vocab[f"<unused_{i:03d}>"] = len(vocab)
        i += 1
    for j in range(n_action_tokens):
        vocab[f"<act_{j:03d}>"] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False,
    )
    hf.add_special_tokens({"pad_token": PAD_TOKEN})
    if out_dir is not None:
        save_text_tokenizer(hf, out_dir)
    return hf
