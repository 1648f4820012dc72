"""Prompt building (OpenVLA "PurePromptBuilder" layout) and batch collation.

Training sequence (shared/oxe/datasets.yaml, ``prompt``):
    <s> In: What action should the robot take to {instruction.lower()}?\\nOut: [▁] a1..a7 </s>
The 7 action ids are written directly (no decode/re-tokenize round trip). ``[▁]`` is the
standalone SentencePiece space piece (Llama-2 id 29871), only for SentencePiece tokenizers.
Labels are -100 everywhere except the 7 action tokens and ``</s>`` (the HF-style shift happens in
the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.model.tokenizer import ActionTokenizer

__all__ = [
    "IGNORE_INDEX",
    "MAX_LEN",
    "PROMPT_TEMPLATE",
    "ActionPromptBuilder",
    "collate",
    "format_prompt",
    "sentencepiece_space_id",
    "SENTENCEPIECE_SPACE",
]

IGNORE_INDEX = -100
MAX_LEN = 2048
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
SENTENCEPIECE_SPACE = "\u2581"  # "▁": Llama-2 id 29871


def sentencepiece_space_id(tokenizer: Any) -> int | None:
    """Id of the standalone SentencePiece space piece "▁" (Llama-2: 29871), or None when the
    tokenizer is not SentencePiece-based (e.g. the byte-level BPE demo tokenizer)."""
    tid = tokenizer.get_vocab().get(SENTENCEPIECE_SPACE)
    return None if tid is None else int(tid)


def format_prompt(instruction: str) -> str:
    """The inference prompt text for ``instruction`` (lower-cased, nothing else normalized)."""
    return PROMPT_TEMPLATE.format(instruction=str(instruction).lower())


class ActionPromptBuilder:
    """Builds ``input_ids``/``labels`` for (instruction, normalized action) pairs.

    Args:
        text_tokenizer: an HF tokenizer (Llama-2 or the demo BPE tokenizer).
        action_tokenizer: defaults to ``ActionTokenizer(base_vocab_size=text_tokenizer.vocab_size)``.
        space_token_id: "auto" (SentencePiece "▁" id when the tokenizer has one, else none),
            an explicit id, or None (never insert).
        predict_stop_token: supervise ``</s>`` too (OpenVLA default True).
        max_len: sequences are truncated to this many tokens (labels truncated alike).
    """

    def __init__(
        self,
        text_tokenizer: Any,
        action_tokenizer: ActionTokenizer | None = None,
        *,
        space_token_id: int | str | None = "auto",
        predict_stop_token: bool = True,
        max_len: int = MAX_LEN,
    ) -> None:
        self.text_tokenizer = text_tokenizer
        self.action_tokenizer = action_tokenizer or ActionTokenizer(
            base_vocab_size=int(text_tokenizer.vocab_size))
        if space_token_id == "auto":
            space_token_id = sentencepiece_space_id(text_tokenizer)
        elif isinstance(space_token_id, str):
            raise ValueError(f"space_token_id={space_token_id!r}: use 'auto', an int id or None")
        self.space_token_id: int | None = space_token_id
        self.predict_stop_token = predict_stop_token
        self.max_len = int(max_len)
        self.bos_id = int(text_tokenizer.bos_token_id)
        self.eos_id = int(text_tokenizer.eos_token_id)
        self._cache: dict[str, list[int]] = {}

    def prompt_ids(self, instruction: str, *, add_space: bool = True) -> list[int]:
        """``[BOS] + tokens(prompt)`` (+ the space id when the tokenizer uses one and add_space).

        This is also the inference prompt: generate ``action_dim`` tokens after it.
        """
        key = str(instruction)
        if key not in self._cache:
            body = self.text_tokenizer(format_prompt(key), add_special_tokens=False)["input_ids"]
            self._cache[key] = [self.bos_id, *map(int, body)]
            if len(self._cache) > 100_000:  # bounded cache: many distinct instructions
                self._cache.clear()
        ids = list(self._cache[key])
        if add_space and self.space_token_id is not None:
            ids.append(self.space_token_id)
        return ids

    def build(self, instruction: str, action: Any) -> tuple[np.ndarray, np.ndarray]:
        """(instruction, normalized action float[D]) -> (input_ids int64[L], labels int64[L])."""
        action_ids = np.asarray(self.action_tokenizer.encode(np.asarray(action, dtype=np.float32)))
        if action_ids.ndim != 1:
            raise ValueError(f"action shape {action_ids.shape}: expected one action vector [D]")
        prefix = self.prompt_ids(instruction)
        ids = np.asarray([*prefix, *action_ids.tolist(), self.eos_id], dtype=np.int64)
        labels = np.full_like(ids, IGNORE_INDEX)
        n_sup = len(action_ids) + 1
        labels[-n_sup:] = ids[-n_sup:]
        if not self.predict_stop_token:
            labels[-1] = IGNORE_INDEX
        return ids[: self.max_len], labels[: self.max_len]

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Batch transform for one frame.

        Reads: ``language_instruction`` (str or bytes), ``action`` (float32[7], normalized),
        ``pixel_values`` (float32 [3,H,W] in [0,1], numpy or torch). Other keys are passed through.
        Writes: ``input_ids``, ``labels`` (int64[L] numpy).
        """
        instr = sample["language_instruction"]
        if isinstance(instr, bytes):
            instr = instr.decode("utf-8")
        ids, labels = self.build(instr, sample["action"])
        out = dict(sample)
        out["input_ids"] = ids
        out["labels"] = labels
        return out


def collate(samples: Sequence[Mapping[str, Any]], pad_id: int, *, max_len: int = MAX_LEN) -> dict[str, Any]:
    """Right-pad a list of samples into a training batch (contract: "Training batch").

    Each sample: ``input_ids``/``labels`` int[L_i], ``pixel_values`` float[3,H,W]; optional
    ``dataset_index`` int and ``meta`` (anything). Returns torch tensors ``input_ids`` int64[B,L]
    (pad = ``pad_id``), ``labels`` int64[B,L] (pad = -100), ``attention_mask`` bool[B,L] (True on
    real tokens), ``pixel_values`` float32[B,3,H,W], ``dataset_index`` int64[B] (0 when absent) and
    ``meta`` (list). L = min(max_i L_i, max_len). ``pixel_values`` is left out when the samples
    have none (callers that batch images themselves).
    """
    import torch

    if not samples:
        raise ValueError("collate: got an empty list of samples")
    lengths = [min(len(s["input_ids"]), max_len) for s in samples]
    b, seq = len(samples), max(lengths)
    input_ids = torch.full((b, seq), int(pad_id), dtype=torch.int64)
    labels = torch.full((b, seq), IGNORE_INDEX, dtype=torch.int64)
    attention_mask = torch.zeros((b, seq), dtype=torch.bool)
    for i, (s, n) in enumerate(zip(samples, lengths)):
        input_ids[i, :n] = torch.as_tensor(np.asarray(s["input_ids"][:n]), dtype=torch.int64)
        labels[i, :n] = torch.as_tensor(np.asarray(s["labels"][:n]), dtype=torch.int64)
        attention_mask[i, :n] = True
    dataset_index = torch.as_tensor([int(s.get("dataset_index", 0)) for s in samples], dtype=torch.int64)
    batch: dict[str, Any] = {}
    if "pixel_values" in samples[0]:
        batch["pixel_values"] = _stack_pixels([s["pixel_values"] for s in samples])
    return {
        **batch,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "dataset_index": dataset_index,
        "meta": [s.get("meta") for s in samples],
    }


def _stack_pixels(items: list[Any]) -> Any:
    """float32 [B, 3, H, W] from per-sample numpy arrays or tensors (one copy for numpy input)."""
    import torch

    if all(isinstance(x, torch.Tensor) for x in items):
        return torch.stack(items).to(torch.float32)
    return torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in items]))
