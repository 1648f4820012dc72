"""save_pretrained / from_pretrained round trips (local and gs://) and load_pretrained parts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.presets import VLAConfig
from pipeline.model.text_tokenizer import load_text_tokenizer
from pipeline.model.vla import VLA, build_vla, load_pretrained


def _loss(model, batch):
    with torch.no_grad():
        return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"]).loss


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_round_trip(where, tmp_path, request, tiny_model, tiny_batch, demo_tokenizer):
    url = str(tmp_path / "export") if where == "local" else request.getfixturevalue("gcs_bucket") + "/export"
    stats = {"demo": {"action": {"q01": [0.0] * 7}}}
    tiny_model.save_pretrained(url, tokenizer=demo_tokenizer, extra_json={"dataset_statistics.json": stats})
    names = {fs.basename(u) for u in fs.listdir(url)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "dataset_statistics.json"} <= names
    loaded = VLA.from_pretrained(url)
    assert loaded.config == tiny_model.config
    torch.testing.assert_close(_loss(loaded, tiny_batch), _loss(tiny_model, tiny_batch))
    tok = load_text_tokenizer(url)
    assert tok.get_vocab() == demo_tokenizer.get_vocab()
    assert fs.read_json(fs.join(url, "dataset_statistics.json")) == stats


def test_from_pretrained_missing(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        VLA.from_pretrained(str(tmp_path))


def test_load_pretrained_parts(tmp_path, demo_tokenizer, tiny_model, tiny_batch):
    from transformers import LlamaForCausalLM

    src = tiny_model
    root = tmp_path / "pre"
    # an HF LLM checkpoint with the unpadded vocab (like Llama-2's 32000 rows vs our 32064)
    hf = LlamaForCausalLM(src.llm.config.__class__(**{**src.llm.config.to_dict(), "vocab_size": 769}))
    hf.save_pretrained(str(root / "llm"))
    save_file({k: v.contiguous() for k, v in src.vision.state_dict().items()}, str(root / "vision.safetensors"))
    save_file(src.projector.state_dict(), str(root / "projector.safetensors"))

    torch.manual_seed(1)
    dst = build_vla(VLAConfig(preset="tiny"), vocab_size=len(demo_tokenizer))
    assert load_pretrained(dst, str(root)) == {"llm": True, "vision": True, "projector": True}
    for a, b in zip(dst.vision.parameters(), src.vision.parameters()):
        torch.testing.assert_close(a, b)
    emb = dst.llm.get_input_embeddings().weight
    assert emb.shape == (832, 192)
    torch.testing.assert_close(emb[:769], hf.get_input_embeddings().weight)
    torch.testing.assert_close(dst.llm.model.layers[0].mlp.up_proj.weight, hf.model.layers[0].mlp.up_proj.weight)
    assert torch.isfinite(_loss(dst, tiny_batch))
    assert load_pretrained(dst, str(tmp_path / "none")) == {"llm": False, "vision": False, "projector": False}


def test_load_pretrained_llm_from_gcs(gcs_bucket, tmp_path, demo_tokenizer, tiny_model):
    tiny_model.llm.save_pretrained(str(tmp_path / "llm"))
    for name in sorted((tmp_path / "llm").iterdir()):
        fs.write_bytes(f"{gcs_bucket}/pre/llm/{name.name}", name.read_bytes())
    dst = build_vla(VLAConfig(preset="tiny"), vocab_size=len(demo_tokenizer))
    assert load_pretrained(dst, f"{gcs_bucket}/pre")["llm"]
    torch.testing.assert_close(dst.llm.state_dict(), tiny_model.llm.state_dict())


def test_load_pretrained_mismatch(tmp_path, demo_tokenizer, tiny_model):
    other = build_vla(VLAConfig(preset="tiny", llm_num_layers=4), vocab_size=len(demo_tokenizer))
    other.llm.save_pretrained(str(tmp_path / "llm"))
    with pytest.raises(UserError, match="num_hidden_layers"):
        load_pretrained(tiny_model, str(tmp_path))
