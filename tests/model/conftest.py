"""Shared model-test fixtures: the demo tokenizer, a SentencePiece-style tokenizer, a tiny VLA."""

from __future__ import annotations

import numpy as np
import pytest

INSTRUCTIONS = ["Pick up the red block", "put the spoon in the pot", "Open the drawer.",
                "close the microwave", "move the can to the left"]


@pytest.fixture(scope="session")
def instructions() -> list[str]:
    return list(INSTRUCTIONS)


@pytest.fixture(scope="session")
def demo_tokenizer():
    from pipeline.model.text_tokenizer import build_demo_tokenizer

    return build_demo_tokenizer(INSTRUCTIONS)


@pytest.fixture(scope="session")
def sp_tokenizer():
    """A small Metaspace ("▁") BPE tokenizer laid out like Llama-2 (SentencePiece-style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pipeline.model.prompt import format_prompt

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator([format_prompt(s) + " " for s in INSTRUCTIONS], trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>")
    hf.add_special_tokens({"pad_token": "<PAD>"})
    return hf


@pytest.fixture()
def tiny_batch(demo_tokenizer):
    """A collated batch of 4 frames (different instructions -> padding) at 112 px (the tiny preset size)."""
    from pipeline.model.prompt import ActionPromptBuilder, collate

    rng = np.random.default_rng(0)
    pb = ActionPromptBuilder(demo_tokenizer)
    samples = [pb({"language_instruction": INSTRUCTIONS[i], "action": rng.uniform(-1, 1, 7),
                   "pixel_values": rng.random((3, 112, 112), dtype=np.float32), "dataset_index": i})
               for i in range(4)]
    return collate(samples, demo_tokenizer.pad_token_id)


@pytest.fixture()
def tiny_model(demo_tokenizer):
    import torch

    from pipeline.model.presets import VLAConfig
    from pipeline.model.vla import build_vla

    torch.manual_seed(0)
    return build_vla(VLAConfig(preset="tiny"), vocab_size=len(demo_tokenizer),
                     pad_token_id=demo_tokenizer.pad_token_id)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every model test runs with one intra-op thread (see tests/conftest.py)."""
    yield
