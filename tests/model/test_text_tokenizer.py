"""Demo tokenizer layout/determinism and tokenizer loading (local and gs://)."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import UserError
from pipeline.model.prompt import sentencepiece_space_id
from pipeline.model.text_tokenizer import build_demo_tokenizer, load_text_tokenizer, save_text_tokenizer
from pipeline.model.tokenizer import ActionTokenizer


def test_demo_layout(demo_tokenizer):
    tok = demo_tokenizer
    assert tok.vocab_size == 768 and len(tok) == 769
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 768)
    assert tok.convert_ids_to_tokens([512, 767]) == ["<act_000>", "<act_255>"]
    at = ActionTokenizer(base_vocab_size=tok.vocab_size)
    assert (at.first_id, at.last_id) == (512, 767)
    ids = tok("pick up the red block")["input_ids"]
    assert ids[0] == 1 and all(i < 512 for i in ids)  # BOS added; text never hits action ids
    assert tok.decode(ids, skip_special_tokens=True) == "pick up the red block"
    assert sentencepiece_space_id(tok) is None


def test_demo_deterministic(instructions):
    a = build_demo_tokenizer(list(reversed(instructions)))
    b = build_demo_tokenizer(instructions)
    assert a.get_vocab() == b.get_vocab()
    text = "In: What action should the robot take to open the drawer.?\nOut:"
    assert a(text)["input_ids"] == b(text)["input_ids"]


def test_demo_bad_size(instructions):
    with pytest.raises(ValueError, match="text_vocab_size"):
        build_demo_tokenizer(instructions, text_vocab_size=100)


def test_save_load_local(tmp_path, demo_tokenizer, instructions):
    out = str(tmp_path / "tok")
    build_demo_tokenizer(instructions, out_dir=out)
    tok = load_text_tokenizer(out)
    assert tok.get_vocab() == demo_tokenizer.get_vocab()
    assert (tok.vocab_size, tok.pad_token_id, tok.bos_token_id) == (768, 768, 1)
    assert tok("close the microwave")["input_ids"] == demo_tokenizer("close the microwave")["input_ids"]


def test_save_load_gcs(gcs_bucket, demo_tokenizer, sp_tokenizer):
    save_text_tokenizer(demo_tokenizer, f"{gcs_bucket}/tok")
    tok = load_text_tokenizer(f"{gcs_bucket}/tok")
    assert tok.get_vocab() == demo_tokenizer.get_vocab() and tok.pad_token_id == 768
    save_text_tokenizer(sp_tokenizer, f"{gcs_bucket}/sp")
    sp = load_text_tokenizer(f"{gcs_bucket}/sp")
    assert sentencepiece_space_id(sp) == sentencepiece_space_id(sp_tokenizer) is not None


def test_load_missing(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="tokenizer"):
        load_text_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not found"):
        load_text_tokenizer(str(tmp_path / "nope"))
