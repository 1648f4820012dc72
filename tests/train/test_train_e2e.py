"""End to end on real data: `vla fixture` -> `vla curate mixture=demo` -> `vla train nproc=2` (the CLI
re-launches itself under torchrun; real tiny VLA, real stream) -> `vla plot` -> `vla export`, and the
export reloads with identical logits."""

from __future__ import annotations

import json
import os

import pytest
import torch
from train_helpers import check, run_cli

from pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("data")
    raw, out = str(root / "raw"), str(root / "curated")
    check(run_cli(["fixture", f"out={raw}", "datasets=[bridge_orig,fractal20220817_data,taco_play]",
                   "episodes=4", "steps=8-10", "image_size=64"]))
    check(run_cli(["curate", "mixture=demo", f"source={raw}", f"out={out}", "progress=false", "ray.num_cpus=2"]))
    return out


@pytest.fixture(scope="module")
def trained(curated, tmp_path_factory) -> str:
    run_dir = str(tmp_path_factory.mktemp("run"))
    proc = run_cli(["train", f"run_dir={run_dir}", f"data.data_root={curated}", "nproc=2", "per_device_batch=4",
                    "global_batch=16", "stop.max_steps=4", "checkpoint.save_every=2", "optim.lr=1e-3",
                    "metrics.progress=false", "model.llm_num_layers=1", "model.vision_depth=1",
                    "eval.every_steps=2", "eval.batches=1"], timeout=150)
    check(proc)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["world_size"] == 2
    assert summary["last_checkpoint"].endswith("step_000004")
    return run_dir


def test_train_two_ranks_on_curated_demo_mixture(trained):
    records = [json.loads(line) for line in open(os.path.join(trained, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert r["loss"] > 0 and 0.0 <= r["action_accuracy"] <= 1.0 and r["l1"] >= 0.0
        assert set(r["dataset_accuracy"]) == {"bridge_orig", "fractal20220817_data", "taco_play"}
        assert r["samples_per_s"] > 0 and 0.0 <= r["data_wait_pct"] <= 100.0
    assert records[-1]["loss"] < records[0]["loss"]
    # validation every 2 steps on the curated val split (bridge_orig has one; fractal's 95% boundary
    # of 4 episodes is 4, taco_play's other split is test): loss and accuracy, overall and per dataset
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    for r in records[1::2]:
        assert r["eval_loss"] > 0 and 0.0 <= r["eval_action_accuracy"] <= 1.0 and r["eval_samples"] == 8
        assert set(r["eval_dataset_accuracy"]) == set(r["eval_dataset_loss"]) == {"bridge_orig"}
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(trained, "tensorboard")))
    step_dir = os.path.join(trained, "checkpoints", "step_000004")
    assert sorted(os.listdir(os.path.join(step_dir, "ranks"))) == ["rank_00000-of-00002.json",
                                                                   "rank_00001-of-00002.json"]
    stats = json.load(open(os.path.join(step_dir, "dataset_statistics.json")))
    assert set(stats) == {"bridge_orig", "fractal20220817_data", "taco_play"}


def test_resumed_run_validates_identically(trained, curated, tmp_path):
    """Resumed from step 2 in a fresh run dir: step 4's training loss and validation record are the
    uninterrupted run's, bit for bit (the validation set does not depend on the training stream)."""
    run_dir = str(tmp_path / "resumed")
    check(run_cli(["train", f"run_dir={run_dir}", f"data.data_root={curated}", "nproc=2", "per_device_batch=4",
                   "global_batch=16", "stop.max_steps=4", "checkpoint.save_every=2", "optim.lr=1e-3",
                   "metrics.progress=false", "model.llm_num_layers=1", "model.vision_depth=1",
                   "eval.every_steps=2", "eval.batches=1",
                   f"resume={os.path.join(trained, 'checkpoints', 'step_000002')}"], timeout=150))
    keys = ("loss", "eval_loss", "eval_action_accuracy", "eval_dataset_loss", "eval_dataset_accuracy")
    original = {r["step"]: r for r in map(json.loads, open(os.path.join(trained, "metrics.jsonl")))}
    resumed = {r["step"]: r for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl")))}
    assert sorted(resumed) == [3, 4]
    assert {k: resumed[4][k] for k in keys} == {k: original[4][k] for k in keys}


def test_plot_png(trained, capsys):
    assert main(["plot", f"run_dir={trained}"]) == 0
    png = os.path.join(trained, "training_curves.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_export_reload_identical_logits(trained, tmp_path, capsys):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from pipeline.model import ActionPromptBuilder, VLAConfig, build_vla, collate
    from pipeline.train.export import load_exported

    out = str(tmp_path / "export")
    assert main(["export", f"checkpoint={trained}", f"out={out}"]) == 0
    model, tok, stats = load_exported(out)
    assert set(stats) == {"bridge_orig", "fractal20220817_data", "taco_play"}
    # an independent consolidation of the same DCP checkpoint
    step_dir = os.path.join(trained, "checkpoints", "step_000004")
    dcp_to_torch_save(step_dir, str(tmp_path / "full.pt"))
    full = torch.load(str(tmp_path / "full.pt"), weights_only=True)["app"]["model"]
    cfg = VLAConfig.from_dict(json.load(open(os.path.join(step_dir, "model_config.json"))))
    ref = build_vla(cfg)
    ref.load_state_dict(full)
    ref.eval()
    with torch.no_grad():  # the export stores bf16 weights (the default dtype)
        for t in ref.state_dict().values():
            t.copy_(t.to(torch.bfloat16))
    builder = ActionPromptBuilder(tok)
    gen = torch.Generator().manual_seed(0)
    samples = [builder({"language_instruction": "pick up the red block", "action": [0.1] * 7,
                        "pixel_values": torch.rand(3, 64, 64, generator=gen).numpy()}) for _ in range(2)]
    batch = collate(samples, tok.pad_token_id)
    with torch.no_grad():
        a = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], full_logits=True).logits
        b = ref(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], full_logits=True).logits
    assert torch.equal(a, b)
    # and the export is the trained model, not a fresh init
    fresh = build_vla(cfg)
    assert not torch.equal(fresh.projector[0].weight, model.projector[0].weight)


def test_checkpoint_of_another_architecture_is_refused(trained, tmp_path, capsys):
    import shutil

    step_dir = str(tmp_path / "step_000004")
    shutil.copytree(os.path.join(trained, "checkpoints", "step_000004"), step_dir)
    cfg_path = os.path.join(step_dir, "model_config.json")
    cfg = json.load(open(cfg_path))
    cfg["llm_intermediate_size"] = cfg["llm_intermediate_size"] * 2
    json.dump(cfg, open(cfg_path, "w"))
    assert main(["export", f"checkpoint={step_dir}", f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this model" in err[0] and "mlp" in err[0]
    assert not (tmp_path / "out").exists()
