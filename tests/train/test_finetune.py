"""`vla finetune` (LoRA with peft): a tiny base pretrained on the synthetic source, then fine-tuned on a
NEW curated dataset (a made-up robot: its own instructions, colours and action scale) it never saw.

Checks: the target accuracy is reached with < 5% of the parameters trainable (the printed
fraction), only adapters are optimized, the new dataset's statistics travel with checkpoints and
the merged export, the merged export loads with plain ``load_pretrained_vla`` and gives the LoRA
model's logits, ``predict_action(unnorm_key=new)`` returns the robot's actions, ``resume=auto`` is
bit-identical, and a 2-rank FSDP2 run (torchrun) from a training-checkpoint base works.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from train_helpers import check, run_cli

from pipeline import fs
from pipeline.errors import UserError

NEW = "berkeley_cable_routing"  # a registered OXE name used as the label of the made-up robot's data
TASKS = [  # instruction, rgb colour, action in the robot's own units (metres / radians / gripper)
    ("route the cable through the clip", (0.9, 0.2, 0.2), [0.04, -0.02, 0.0, 0.0, 0.1, 0.0, 1.0]),
    ("pull the cable to the left", (0.2, 0.9, 0.2), [-0.05, 0.0, 0.01, 0.0, 0.0, -0.2, 1.0]),
    ("lift the cable off the table", (0.2, 0.2, 0.9), [0.0, 0.0, 0.05, 0.1, 0.0, 0.0, 0.0]),
    ("release the cable", (0.9, 0.9, 0.2), [0.01, 0.03, -0.03, 0.0, -0.1, 0.1, 1.0]),
]
SMALL = ["model.llm_num_layers=2", "model.vision_depth=1"]  # the base's architecture (fine-tuning takes it)
FT = ["per_device_batch=8", "optim.lr=3e-3", "data.stream.augment=false", "data.stream.num_workers=0", "metrics.progress=false",
      "metrics.tensorboard=false", "seed=1"]


def _jpeg(rgb: tuple, rng: np.random.Generator, size: int = 32) -> bytes:
    from PIL import Image

    img = np.clip(np.asarray(rgb)[None, None] * 255 + rng.integers(-8, 9, (size, size, 3)), 0, 255)
    out = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_new_robot_dataset(root: str, episodes_per_task: int = 2, length: int = 8) -> dict:
    """A curated-format dataset (contracts.md) at ``<root>/NEW/1.0.0``; returns its statistics."""
    from pipeline.data.fixtures.curated import write_curated_episodes

    rng = np.random.default_rng(0)
    episodes = []
    for e in range(episodes_per_task * len(TASKS)):
        text, rgb, action = TASKS[e % len(TASKS)]
        empty = np.array([b""] * length, dtype=object)
        steps = {"observation": {"image_primary": np.array([_jpeg(rgb, rng) for _ in range(length)], dtype=object),
                                 "image_secondary": empty, "image_wrist": empty,
                                 "proprio": rng.normal(0, 0.1, (length, 8)).astype(np.float32)},
                 "action": np.tile(np.asarray(action, np.float32), (length, 1)),
                 "language_instruction": np.array([text] * length, dtype=object),
                 "is_first": np.arange(length) == 0, "is_last": np.arange(length) == length - 1,
                 "is_terminal": np.arange(length) == length - 1}
        meta = {"dataset_name": NEW, "episode_id": f"{NEW}-{e:05d}", "source_file": "byod", "source_index": np.int64(e)}
        episodes.append({"steps": steps, "episode_metadata": meta})
    return write_curated_episodes(root, NEW, episodes)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A tiny base pretrained briefly on the synthetic source (not on NEW), and its export."""
    from pipeline.config import load_config
    from pipeline.train.config import TrainConfig
    from pipeline.train.export import export_checkpoint
    from pipeline.train.main import train

    root = tmp_path_factory.mktemp("base")
    run_dir = str(root / "run")
    cfg = load_config(TrainConfig, ["data.source=synthetic", "per_device_batch=8", "optim.lr=2e-3", "stop.max_steps=6",
                                    "stop.accuracy=2.0", "metrics.progress=false", "metrics.tensorboard=false",
                                    f"run_dir={run_dir}", *SMALL])
    summary = train(cfg)
    export_checkpoint(run_dir, str(root / "export"))
    return {"run_dir": run_dir, "export": str(root / "export"), "checkpoint": summary["last_checkpoint"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("new_robot")
    stats = write_new_robot_dataset(str(root / "curated"))
    mixture = root / "new_robot.yaml"
    mixture.write_text(f"name: new_robot\ndescription: the made-up robot\ndatasets:\n  {NEW}: 1.0\n")
    return {"args": [f"data.data_root={root / 'curated'}", f"data.mixture={mixture}",
                     f"data.stream.index_cache_dir={root / 'index'}"], "stats": stats}


def _cfg(args: list[str]):
    from pipeline.config import load_config
    from pipeline.train.finetune import FinetuneConfig

    return load_config(FinetuneConfig, args)


def _losses(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def _lora_model_from_checkpoint(step_dir: str):
    """The un-merged LoRA model of a fine-tuning checkpoint (single process, DCP resharded to one)."""
    import torch.distributed.checkpoint as dcp

    from pipeline.model import VLAConfig, build_vla
    from pipeline.train.checkpoint import ModelOptimState
    from pipeline.train.lora import apply_lora_spec

    model = build_vla(VLAConfig.from_dict(fs.read_json(os.path.join(step_dir, "model_config.json"))))
    apply_lora_spec(model, fs.read_json(os.path.join(step_dir, "lora_config.json")))
    dcp.load({"app": ModelOptimState(model, None)}, storage_reader=dcp.FileSystemReader(step_dir), no_dist=True)
    return model.eval()


@pytest.mark.slow
def test_lora_reaches_target_on_new_dataset_and_merged_export_matches(base, data, tmp_path, capsys):
    from pipeline.model import collate
    from pipeline.model.inference import load_policy
    from pipeline.model.pretrained import load_pretrained_vla
    from pipeline.train.finetune import run_finetune

    run_dir = str(tmp_path / "ft")
    cfg = _cfg([f"base={base['export']}", f"run_dir={run_dir}", *data["args"], *FT, "lora.rank=4",
                "stop.accuracy=0.99", "stop.window=5", "stop.max_steps=300", "checkpoint.save_every=1000"])
    assert run_finetune(cfg) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("trainable parameters:"))
    summary = json.loads(next(x for x in out.splitlines() if x.startswith("{")))
    fraction = summary["trainable_fraction"]
    assert f"({100 * fraction:.2f}%)" in line and fraction < 0.05, line
    assert summary["stop_reason"] == "accuracy" and summary["final_action_accuracy_avg"] >= 0.95, summary
    print(f"\nLoRA rank 4: {line}; reached {summary['final_action_accuracy_avg']:.3f} in {summary['steps']} steps")

    step_dir = summary["last_checkpoint"]
    assert fs.read_json(os.path.join(step_dir, "dataset_statistics.json")) == data["stats"]
    assert fs.read_json(os.path.join(step_dir, "lora_config.json"))["alpha"] == 4.0  # min(rank, 16)
    import torch.distributed.checkpoint as dcp

    saved = dcp.FileSystemReader(step_dir).read_metadata().state_dict_metadata
    optim_keys = [k for k in saved if k.startswith("app.optim.state.")]
    assert optim_keys and all(".lora_" in k for k in optim_keys)  # only the adapters are optimized
    ft = _lora_model_from_checkpoint(step_dir)
    frozen_same = load_pretrained_vla(base["export"]).model.llm.model.embed_tokens.weight
    torch.testing.assert_close(ft.llm.model.embed_tokens.weight, frozen_same, rtol=0, atol=0)  # frozen

    export = os.path.join(run_dir, "export")  # lora.merge_on_export (default)
    assert f"merged LoRA export: {export}" in out
    merged = load_pretrained_vla(export).model.eval()
    assert not any("lora" in k for k in merged.state_dict())
    policy = load_policy(export)
    samples = [policy.prompt_builder({"language_instruction": t, "action": [0.0] * 7,
                                      "pixel_values": np.full((3, 112, 112), 0.5, np.float32) * np.asarray(c)[:, None, None]})
               for t, c, _ in TASKS]
    batch = collate(samples, policy.text_tokenizer.pad_token_id)
    args = (batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        a = ft(*args, full_logits=True).logits
        b = merged(*args, full_logits=True).logits
    torch.testing.assert_close(b, a, rtol=0.05, atol=0.05)  # the export is bf16
    assert (b.argmax(-1) == a.argmax(-1)).float().mean() > 0.99
    # the standalone peft adapter (lora.save_adapter) on the un-merged base is the LoRA model itself
    from peft import PeftModel

    from pipeline.train.lora import merge_lora

    adapted = PeftModel.from_pretrained(load_pretrained_vla(base["export"]).model, os.path.join(run_dir, "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(*args, full_logits=True).logits, a, rtol=1e-5, atol=1e-5)
    # and the merged export holds exactly the merged weights, rounded to bf16
    want = merge_lora(ft).state_dict()
    for name, t in merged.state_dict().items():
        assert torch.equal(t, want[name].to(torch.bfloat16).float()), name
    assert policy.norm_stats == data["stats"]
    for text, rgb, action in TASKS:  # the robot's own units come back through the new statistics
        image = np.clip(np.asarray(rgb)[None, None] * 255, 0, 255).astype(np.uint8).repeat(32, 0).repeat(32, 1)
        got = policy.predict_action(image, text, unnorm_key=NEW)
        np.testing.assert_allclose(got, action, atol=0.02)


@pytest.mark.slow
def test_resume_auto_is_bit_identical(base, data, tmp_path):
    from pipeline.train.finetune import finetune

    common = [f"base={base['export']}", *data["args"], *FT, "lora.rank=4", "stop.accuracy=2.0",
              "checkpoint.save_every=2", "checkpoint.keep_last=0", "lora.merge_on_export=false"]
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    finetune(_cfg([*common, f"run_dir={ref}", "stop.max_steps=5"]))
    finetune(_cfg([*common, f"run_dir={run}", "stop.max_steps=3"]))  # stops at 3, checkpoints 2 and 3
    summary = finetune(_cfg([*common, f"run_dir={run}", "stop.max_steps=5"]))  # resume=auto: from step 3
    assert summary["resumed_from"].endswith("step_000003")
    got, want = _losses(run), _losses(ref)
    assert [got[s] for s in (4, 5)] == [want[s] for s in (4, 5)]  # bit-identical
    assert got[4] != got[5]


@pytest.mark.slow
def test_two_ranks_from_a_training_checkpoint(base, data, tmp_path):
    from pipeline.train.finetune import finetune

    run_dir, one = str(tmp_path / "ft2"), str(tmp_path / "ft1")
    common = [f"base={base['checkpoint']}", *data["args"], *FT, "lora.rank=4", "lora.projector=true",
              "stop.accuracy=2.0", "stop.max_steps=3"]
    proc = run_cli(["finetune", f"run_dir={run_dir}", *common, "nproc=2", "per_device_batch=4"], timeout=180)
    check(proc)
    finetune(_cfg([f"run_dir={one}", *common, "lora.merge_on_export=false"]))  # same global batch, 1 rank
    two, ref = _losses(run_dir), _losses(one)
    for step in (1, 2, 3):  # FSDP2 with frozen base weights + sharded adapters = the 1-rank updates
        assert abs(two[step] - ref[step]) <= 1e-4 * abs(ref[step]), (step, two, ref)
    summary = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("{")))
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["trainable_fraction"] < 0.05
    assert proc.stdout.count("trainable parameters:") == 1  # rank 0 only
    step_dir = summary["last_checkpoint"]
    assert sorted(os.listdir(os.path.join(step_dir, "ranks"))) == ["rank_00000-of-00002.json",
                                                                   "rank_00001-of-00002.json"]
    assert any(t.startswith("projector.") for t in fs.read_json(os.path.join(step_dir, "lora_config.json"))["targets"])
    from pipeline.train.export import load_exported

    model, _, stats = load_exported(os.path.join(run_dir, "export"))
    assert set(stats) == {NEW} and not any("lora" in k for k in model.state_dict())


@pytest.mark.slow
def test_bad_base_and_target_are_one_line_errors(base, data, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.train.finetune import finetune

    with pytest.raises(UserError, match="neither a model folder"):
        finetune(_cfg([f"base={tmp_path}", f"run_dir={tmp_path / 'r'}", *data["args"]]))
    with pytest.raises(UserError, match="lora.target=qq_proj"):
        finetune(_cfg([f"base={base['export']}", f"run_dir={tmp_path / 'r'}", *data["args"], *FT,
                       "lora.target=qq_proj", "stop.max_steps=1"]))
    assert main(["finetune", f"run_dir={tmp_path / 'r'}", "lora.rank=0", f"base={base['export']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lora.rank=0" in err, err
    assert not (tmp_path / "r").exists()  # nothing written


def test_openvla_layout_base(base, data, tmp_path):
    """`vla finetune base=<OpenVLA-layout folder>`: the base export converted by `vla export format=openvla`."""
    from pipeline.train.export import export_checkpoint
    from pipeline.train.finetune import finetune

    ov = str(tmp_path / "openvla")
    assert export_checkpoint(base["export"], ov, fmt="openvla") == base["export"]
    assert fs.read_json(os.path.join(ov, "config.json"))["model_type"] == "openvla"
    summary = finetune(_cfg([f"base={ov}", f"run_dir={tmp_path / 'ft'}", *data["args"], *FT, "lora.rank=4",
                             "stop.accuracy=2.0", "stop.max_steps=2", "lora.merge_on_export=false"]))
    assert summary["steps"] == 2 and summary["base"] == ov
    init = summary["init"]
    assert init["sources"] == {"base": ov} and init["loaded"] > 0 and init["missing"] == init["unexpected"] == []
    # the LoRA checkpoint back in OpenVLA's layout, its adapters named after OpenVLA's modules
    out, adapter = str(tmp_path / "ft_openvla"), str(tmp_path / "adapter")
    export_checkpoint(summary["last_checkpoint"], out, fmt="openvla", adapter=adapter)
    weights = fs.read_json(os.path.join(out, "model.safetensors.index.json"))["weight_map"] if os.path.exists(
        os.path.join(out, "model.safetensors.index.json")) else _keys(os.path.join(out, "model.safetensors"))
    targets = fs.read_json(os.path.join(adapter, "adapter_config.json"))["target_modules"]
    assert targets and all(t.startswith("language_model.model.layers.") and f"{t}.weight" in weights for t in targets)
    assert not any("lora" in k for k in weights)


def _keys(path: str) -> list[str]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return list(f.keys())


@pytest.mark.slow
def test_bring_your_own_robot_reach_and_pick(base, tmp_path):
    """The full BYOD path: the registered made-up robot (raw RLDS in its own conventions -> Ray curation),
    image-dependent actions (reach and pick scenes): LoRA rank 8 on the LLM + projector reaches 0.95."""
    from pipeline.data.fixtures.byod import DEMO_ROBOT, make_demo_robot_dataset
    from pipeline.model.inference import load_policy
    from pipeline.train.finetune import export_merged, finetune

    paths = make_demo_robot_dataset(str(tmp_path / "data"), episodes=16, seed=0)
    cfg = _cfg([f"base={base['export']}", f"run_dir={tmp_path / 'ft'}", f"data.data_root={paths['curated']}",
                f"data.mixture={paths['mixture']}", f"data.stream.index_cache_dir={tmp_path / 'index'}",
                *FT, "per_device_batch=16", "lora.rank=8", "lora.projector=true", "stop.accuracy=0.95",
                "stop.window=10", "stop.max_steps=500", "checkpoint.save_every=1000",
                # every movement dim (rotations too) varies with the image: let the LR decay to settle
                "optim.schedule=warmup_cosine", "optim.warmup_steps=20", "optim.decay_steps=500"])
    summary = finetune(cfg)
    assert summary["stop_reason"] == "accuracy" and summary["trainable_fraction"] < 0.05, summary
    out = export_merged(cfg, summary)
    assert set(load_policy(out).norm_stats) == {DEMO_ROBOT}
