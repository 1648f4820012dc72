"""Bad input to `vla train` / `vla export` / `vla plot`: one `error:` line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import re

import pytest

from pipeline.cli import main

SYN = ["data.source=synthetic", "metrics.progress=false"]


def _run(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def _fake_checkpoint(path, preset="small"):
    from pipeline.model import VLAConfig

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model_config.json"), "w") as f:
        json.dump(VLAConfig(preset=preset).resolved().to_dict(), f)
    with open(os.path.join(path, "COMMIT"), "w") as f:
        f.write("step 1\n")


def test_missing_curated_data(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, err = _run(capsys, ["train", f"run_dir={run_dir}", f"data.data_root={tmp_path / 'nope'}"])
    _assert_one_line_error(code, err, "data.data_root=", "curated data not found")
    assert not run_dir.exists()


def test_mixture_names_uncurated_datasets(tmp_path, capsys):
    root = tmp_path / "curated"
    from pipeline.data.manifest import MANIFEST_NAME, STATISTICS_NAME, CuratedDataset

    curated = CuratedDataset(str(root), "bridge_orig")
    os.makedirs(curated.url)
    for name in (STATISTICS_NAME, MANIFEST_NAME):  # the manifest is written last: bridge_orig is complete
        with open(curated.file(name), "w") as f:
            f.write("{}")
    code, err = _run(capsys, ["train", f"run_dir={tmp_path / 'run'}", f"data.data_root={root}", "data.mixture=demo"])
    _assert_one_line_error(code, err, "not curated", "fractal20220817_data", "taco_play")
    assert "bridge_orig" not in err[0].split("not curated")[1]


@pytest.mark.parametrize("resume", ["url", "auto"])
def test_incompatible_checkpoint(tmp_path, capsys, resume):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "step_000001"
    _fake_checkpoint(str(ckpt), preset="small")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    value = str(ckpt) if resume == "url" else "auto"
    code, err = _run(capsys, ["train", *SYN, f"run_dir={run_dir}", f"resume={value}", "model.preset=tiny"])
    _assert_one_line_error(code, err, "incompatible model", "preset='small'")
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'  # nothing overwritten
    assert sorted(os.listdir(run_dir)) == ["checkpoints", "metrics.jsonl"]


def test_resume_from_uncommitted_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "step_000003"
    ckpt.mkdir()
    code, err = _run(capsys, ["train", *SYN, f"run_dir={tmp_path / 'run'}", f"resume={ckpt}"])
    _assert_one_line_error(code, err, "not a committed checkpoint")


def test_unreachable_storage(tmp_path, capsys, gcs_bucket):
    code, err = _run(capsys, ["train", *SYN, f"run_dir={tmp_path / 'run'}",
                              "checkpoint.dir=gs://no-such-bucket-xyz/ckpts"])
    _assert_one_line_error(code, err, "checkpoint.dir=gs://no-such-bucket-xyz/ckpts", "not reachable")
    assert not (tmp_path / "run").exists()


def test_batch_not_divisible_by_world(tmp_path, capsys):
    code, err = _run(capsys, ["train", *SYN, f"run_dir={tmp_path / 'run'}", "nproc=2", "per_device_batch=4",
                              "global_batch=12"])
    _assert_one_line_error(code, err, "global_batch=12", "world size 2", "multiple of 8")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arg,fragment", [
    ("fsdp.mode=zero", "fsdp.mode"), ("fsdp.activation_checkpointing=some", "fsdp.activation_checkpointing"),
    ("data.batch_size=4", "per_device_batch"), ("optim.schedule=linear", "optim.schedule"),
    ("model.llm_num_kv_heads=4", "model.llm_num_kv_heads=4: must divide llm_num_heads=6"),
    ("fsdp.mode=hybrid", None),
])
def test_bad_config_values(tmp_path, capsys, arg, fragment):
    if fragment is None:  # hybrid with a shard size that does not divide the world
        code, err = _run(capsys, ["train", *SYN, f"run_dir={tmp_path / 'r'}", "nproc=2", arg, "fsdp.shard_size=3"])
        _assert_one_line_error(code, err, "fsdp.shard_size=3")
        return
    code, err = _run(capsys, ["train", *SYN, f"run_dir={tmp_path / 'r'}", arg])
    _assert_one_line_error(code, err, fragment)


def test_export_errors(tmp_path, capsys):
    code, err = _run(capsys, ["export", f"checkpoint={tmp_path}", f"out={tmp_path / 'out'}"])
    _assert_one_line_error(code, err, "no committed checkpoint")
    ckpt = tmp_path / "step_000001"
    _fake_checkpoint(str(ckpt))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(capsys, ["export", f"checkpoint={ckpt}", f"out={out}"])
    _assert_one_line_error(code, err, "not empty")
    assert (out / "keep.txt").read_text() == "mine"


def test_plot_without_metrics(tmp_path, capsys):
    code, err = _run(capsys, ["plot", f"run_dir={tmp_path}"])
    _assert_one_line_error(code, err, "no metrics.jsonl")


@pytest.mark.parametrize("args, fragment", [
    (["data.stream.buffer_bytes=10", "data.stream.prefetch_batches=0"], "data.stream.buffer_bytes=10: must be >= 1 MiB"),
    (["data.stream.prefetch_batches=0"], "data.stream.prefetch_batches=0: must be >= 1"),
    (["data.stream.io_threads=0"], "data.stream.io_threads=0: must be >= 1"),
    (["data.buffer_bytes=10"], "data.buffer_bytes' (now data.stream.buffer_bytes)"),
])
def test_stream_values_checked_at_parse_time(tmp_path, capsys, args, fragment):
    """The stream's own checks run when the config is parsed, before anything is built or written."""
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.train.config import TrainConfig

    with pytest.raises(UserError, match=re.escape(fragment)):
        load_config(TrainConfig, args)
    code, err = _run(capsys, ["train", *SYN, f"run_dir={tmp_path / 'run'}", *args])
    _assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()
