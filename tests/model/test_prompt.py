"""Prompt layout, label mask, Llama space piece, collation (padding, truncation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.model.prompt import IGNORE_INDEX, ActionPromptBuilder, collate, format_prompt
from pipeline.model.tokenizer import ActionTokenizer

ACTION = np.array([1.0, -1.0, 0.0, 0.5, -0.5, 0.999, 1.0], dtype=np.float32)
# demo tokenizer: base vocab 768 -> +1.0 -> 512, -1.0 -> 767, 0.0 -> 640, 0.5 -> 576, -0.5 -> 704
DEMO_ACTION_IDS = [512, 767, 640, 576, 704, 513, 512]


def test_format_prompt():
    assert format_prompt("Pick Up the Block.") == (
        "In: What action should the robot take to pick up the block.?\nOut:")


def test_layout_demo(demo_tokenizer):
    pb = ActionPromptBuilder(demo_tokenizer)
    assert pb.space_token_id is None
    ids, labels = pb.build("Pick up the red block", ACTION)
    assert ids.dtype == np.int64 and labels.dtype == np.int64 and ids.shape == labels.shape
    assert ids[0] == 1 and ids[-1] == 2
    assert ids[-8:-1].tolist() == DEMO_ACTION_IDS
    body = demo_tokenizer(format_prompt("Pick up the red block"), add_special_tokens=False)["input_ids"]
    assert ids[1:-8].tolist() == body
    assert demo_tokenizer.decode(ids[1:-8]) == (
        "In: What action should the robot take to pick up the red block?\nOut:")
    assert (labels[:-8] == IGNORE_INDEX).all()
    assert labels[-8:].tolist() == [*DEMO_ACTION_IDS, 2]
    assert pb.prompt_ids("Pick up the red block") == ids[:-8].tolist()


def test_no_stop_token(demo_tokenizer):
    ids, labels = ActionPromptBuilder(demo_tokenizer, predict_stop_token=False).build("x", ACTION)
    assert labels[-1] == IGNORE_INDEX and labels[-8:-1].tolist() == DEMO_ACTION_IDS


def test_sentencepiece_space_piece(sp_tokenizer):
    at = ActionTokenizer(base_vocab_size=1000)  # layout check only: ids need not exist
    pb = ActionPromptBuilder(sp_tokenizer, at)
    space = sp_tokenizer.convert_tokens_to_ids("\u2581")
    assert pb.space_token_id == space
    ids, labels = pb.build("open the drawer.", ACTION)
    assert ids[-9] == space and labels[-9] == IGNORE_INDEX  # "▁" before a1, not supervised
    assert (labels[-8:] != IGNORE_INDEX).all() and (labels[:-8] == IGNORE_INDEX).all()
    assert pb.prompt_ids("open the drawer.")[-1] == space
    explicit = ActionPromptBuilder(sp_tokenizer, at, space_token_id=None).build("open the drawer.", ACTION)[0]
    assert len(explicit) == len(ids) - 1


def test_transform_reads_bytes_and_passes_through(demo_tokenizer):
    pb = ActionPromptBuilder(demo_tokenizer)
    out = pb({"language_instruction": b"Close the microwave", "action": ACTION, "pixel_values": 0,
              "meta": ("ds", "ep", 3)})
    assert out["meta"] == ("ds", "ep", 3)
    assert out["input_ids"].tolist() == pb.build("close the microwave", ACTION)[0].tolist()


def _sample(n: int, label_from: int, size: int = 8) -> dict:
    ids = np.arange(10, 10 + n)
    labels = np.where(np.arange(n) >= label_from, ids, IGNORE_INDEX)
    return {"input_ids": ids, "labels": labels, "pixel_values": np.zeros((3, size, size), np.float32),
            "dataset_index": n, "meta": ("d", "e", n)}


def test_collate_padding():
    b = collate([_sample(5, 2), _sample(3, 1)], pad_id=99)
    assert b["input_ids"].tolist() == [[10, 11, 12, 13, 14], [10, 11, 12, 99, 99]]
    assert b["labels"].tolist() == [[-100, -100, 12, 13, 14], [-100, 11, 12, -100, -100]]
    assert b["attention_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert b["attention_mask"].dtype == torch.bool and b["input_ids"].dtype == torch.int64
    assert b["pixel_values"].shape == (2, 3, 8, 8) and b["pixel_values"].dtype == torch.float32
    assert b["dataset_index"].tolist() == [5, 3] and b["meta"] == [("d", "e", 5), ("d", "e", 3)]


def test_collate_without_pixels_and_torch_pixels():
    a, b = _sample(3, 0), _sample(2, 0)
    del a["pixel_values"], b["pixel_values"]
    assert "pixel_values" not in collate([a, b], pad_id=0)
    a["pixel_values"] = b["pixel_values"] = torch.ones(3, 4, 4, dtype=torch.float64)
    assert collate([a, b], pad_id=0)["pixel_values"].dtype == torch.float32


def test_collate_truncation_and_empty():
    b = collate([_sample(6, 0), _sample(2, 0)], pad_id=0, max_len=4)
    assert b["input_ids"].shape == (2, 4) and b["labels"][0].tolist() == [10, 11, 12, 13]
    with pytest.raises(ValueError):
        collate([], pad_id=0)
