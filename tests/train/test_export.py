"""`vla export`: a training checkpoint to OpenVLA's layout (bf16 shards, config.json with norm_stats,
preprocessor config, tokenizer, model card with the run's facts), back to ours with equal logits, and
one-line refusals."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline import fs
from pipeline.cli import main
from pipeline.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    from pipeline.config import load_config
    from pipeline.train.config import TrainConfig
    from pipeline.train.main import train

    run = str(tmp_path_factory.mktemp("run"))
    train(load_config(TrainConfig, [
        "data.source=synthetic", "per_device_batch=4", "metrics.progress=false", "metrics.tensorboard=false",
        "stop.accuracy=2.0", "stop.window=2", "stop.max_steps=3", "optim.lr=1e-3", "model.llm_num_layers=1",
        "model.vision_depth=1", f"run_dir={run}"]))
    return run


def _logits(url: str) -> torch.Tensor:
    from pipeline.model.pretrained import load_pretrained_vla

    torch.manual_seed(0)
    model = load_pretrained_vla(url).model.eval()
    with torch.no_grad():
        return model(torch.rand(1, 3, 112, 112), torch.tensor([[1, 40, 41, 42, 43]])).logits


def test_openvla_layout_and_back(run_dir, tmp_path, capsys):
    ov, back, ours = str(tmp_path / "ov"), str(tmp_path / "back"), str(tmp_path / "ours")
    assert main(["export", f"checkpoint={run_dir}", f"out={ov}", "format=openvla", "max_shard_size=300KB"]) == 0
    assert f"-> {ov} (format=openvla, bfloat16)" in capsys.readouterr().out
    names = set(os.listdir(ov))
    assert {"config.json", "preprocessor_config.json", "model.safetensors.index.json", "tokenizer.json",
            "dataset_statistics.json", "README.md"} <= names
    shards = {n for n in names if n.startswith("model-") and n.endswith(".safetensors")}
    assert len(shards) > 1 and all(os.path.getsize(os.path.join(ov, n)) < 600_000 for n in shards)
    meta = fs.read_json(os.path.join(ov, "config.json"))
    stats = fs.read_json(os.path.join(run_dir, "checkpoints", "step_000003", "dataset_statistics.json"))
    assert meta["model_type"] == "openvla" and meta["norm_stats"] == stats and meta["torch_dtype"] == "bfloat16"
    assert meta["text_config"]["vocab_size"] - meta["pad_to_multiple_of"] == 768  # OpenVLA's action-id base
    card = fs.read_text(os.path.join(ov, "README.md"))
    for fact in ("library_name: transformers", "steps: 3 (global batch 4)", "Mixture `synthetic`",
                 "final action-token accuracy:", "mean of the last 2 steps", "OpenVLA / Prismatic"):
        assert fact in card, fact
    assert main(["export", f"checkpoint={ov}", f"out={back}"]) == 0  # a model folder converts
    assert main(["export", f"checkpoint={run_dir}", f"out={ours}"]) == 0
    assert fs.read_json(os.path.join(back, "config.json"))["format_version"] == 2
    reference = _logits(ours)
    assert torch.equal(_logits(ov), reference) and torch.equal(_logits(back), reference)


@pytest.mark.parametrize("args, message", [
    (["format=onnx"], "format='onnx': expected vla or openvla"),
    (["dtype=int8"], "dtype='int8': expected bfloat16 or float32"),
    (["max_shard_size=lots"], "max_shard_size='lots'"),
])
def test_bad_options_are_one_line(run_dir, tmp_path, capsys, args, message):
    assert main(["export", f"checkpoint={run_dir}", f"out={tmp_path / 'o'}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "o").exists()


def test_adapter_needs_a_lora_checkpoint(run_dir, tmp_path):
    from pipeline.train.export import export_checkpoint

    with pytest.raises(UserError, match="no LoRA adapters"):
        export_checkpoint(run_dir, str(tmp_path / "o"), adapter=str(tmp_path / "a"))
