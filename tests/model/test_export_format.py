"""save_model_dir / load_pretrained_vla: the vla layout round trip (local and gs://), dtypes, shards,
the model card, the refusal of an OpenVLA export whose vocabulary OpenVLA would decode wrongly."""

from __future__ import annotations

import pytest
import torch

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.export_format import save_model_dir
from pipeline.model.model_card import TrainingFacts
from pipeline.model.pretrained import load_pretrained_vla
from pipeline.model.text_tokenizer import load_text_tokenizer


def _loss(model, batch):
    with torch.no_grad():
        return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"]).loss


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_round_trip(where, tmp_path, request, tiny_model, tiny_batch, demo_tokenizer):
    url = str(tmp_path / "export") if where == "local" else request.getfixturevalue("gcs_bucket") + "/export"
    stats = {"demo": {"action": {"q01": [0.0] * 7}, "num_transitions": 5, "num_trajectories": 1}}
    save_model_dir(tiny_model, url, tokenizer=demo_tokenizer, norm_stats=stats, dtype=None)
    names = {fs.basename(u) for u in fs.listdir(url)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "dataset_statistics.json", "README.md"} <= names
    assert fs.read_json(fs.join(url, "config.json"))["dtype"] == "float32"  # dtype=None: as stored
    loaded = load_pretrained_vla(url).model
    assert loaded.config == tiny_model.config
    assert torch.equal(_loss(loaded, tiny_batch), _loss(tiny_model, tiny_batch))
    tok = load_text_tokenizer(url)
    assert tok.get_vocab() == demo_tokenizer.get_vocab()
    assert fs.read_json(fs.join(url, "dataset_statistics.json")) == stats


def test_bf16_shards_and_model_card(tmp_path, tiny_model, demo_tokenizer):
    out = str(tmp_path / "export")
    train = TrainingFacts(checkpoint="runs/x/checkpoints/step_000100", mixture="bridge", data_root="gs://b/curated",
                          step=100, epoch=0.25, action_accuracy=0.9375, accuracy_window=20, global_batch=64,
                          init={"llm": "meta-llama/Llama-2-7b-hf"})
    stats = {"bridge_orig": {"action": {}, "num_transitions": 1234, "num_trajectories": 56}}
    files = save_model_dir(tiny_model, out, tokenizer=demo_tokenizer, norm_stats=stats, dtype="bfloat16",
                           max_shard_bytes=2_000_000, train=train, train_config="seed: 0\n")
    assert len(files) > 2 and files[-1] == "model.safetensors.index.json"
    weight_map = fs.read_json(fs.join(out, "model.safetensors.index.json"))["weight_map"]
    assert set(weight_map) == set(tiny_model.state_dict())
    loaded = load_pretrained_vla(out).model
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, tiny_model.state_dict()[name].to(torch.bfloat16).float()), name
    card = fs.read_text(fs.join(out, "README.md"))
    assert card.startswith("---\nlibrary_name: vla-pipeline\n")
    for fact in ("steps: 100 (global batch 64)", "final action-token accuracy: 0.9375", "Mixture `bridge`",
                 "| bridge_orig | 1234 | 56 |", "initialized `llm` from `meta-llama/Llama-2-7b-hf`", "(bfloat16)"):
        assert fact in card, fact
    assert fs.read_text(fs.join(out, "train_config.yaml")) == "seed: 0\n"


def test_from_pretrained_missing(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        load_pretrained_vla(str(tmp_path))


def test_openvla_export_refuses_a_vocab_openvla_decodes_wrongly(tmp_path, sp_tokenizer):
    from pipeline.model.presets import VLAConfig
    from pipeline.model.vla import build_vla

    model = build_vla(VLAConfig(preset="tiny"), vocab_size=len(sp_tokenizer), pad_token_id=sp_tokenizer.pad_token_id)
    with pytest.raises(UserError, match=r"format=openvla: OpenVLA decodes actions against 128 - 64 = 64 tokens "
                                        r"but this tokenizer has 123"):
        save_model_dir(model, str(tmp_path / "out"), fmt="openvla", tokenizer=sp_tokenizer)
    assert not (tmp_path / "out").exists()  # checked before anything is written
