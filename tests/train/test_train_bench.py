"""bench-train: exits 2 with one line without a GPU; --smoke runs every variant on CPU, importing
nothing the GPU machine lacks (omegaconf, ray, tensorflow, gcsfs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from train_helpers import ROOT, env

from pipeline.bench.train import main
from pipeline.bench.train_variants import VARIANTS

ABSENT_ON_GPU_MACHINE = ("omegaconf", "antlr4", "ray", "tensorflow", "tensorflow_datasets", "gcsfs")
SUMMARY_KEYS = ("mfu", "speedup", "samples_per_s", "baseline_samples_per_s", "baseline_mfu", "peak_tflops",
                "max_mem_gib", "device", "torch", "best_variant", "failed", "skipped")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_needs_gpu(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0]


def test_smoke_runs_every_variant_without_the_missing_packages():
    block = "".join(f"sys.modules[{m!r}] = None; " for m in ABSENT_ON_GPU_MACHINE)
    code = f"import sys; {block}from pipeline.bench.train import main; sys.exit(main(['--smoke']))"
    proc = subprocess.run([sys.executable, "-c", code], env=env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    *variants, summary = lines
    assert [v["variant"] for v in variants] == list(VARIANTS)
    for v in variants:
        assert "error" not in v, v
        if v["variant"] == "float8":
            assert "CUDA" in v["skipped"]  # reported apart, needs a GPU
        else:
            assert v["samples_per_s"] > 0 and v["flops_per_sample"] > 0 and v["step_s"] > 0
    assert all(k in summary for k in SUMMARY_KEYS)
    assert summary["variant"] == "default" and summary["failed"] == [] and summary["skipped"] == ["float8"]
    by_name = {v["variant"]: v for v in variants}
    assert summary["samples_per_s"] == by_name["default"]["samples_per_s"]
    assert by_name["default"]["optim_shard_s"] > 0 and by_name["baseline"]["optim_shard_s"] == 0


def test_defined_variant_runs_and_bad_ones_exit_2(capsys):
    assert main(["--smoke", "--variants", "default", "--define", "big_units:blocks_per_unit=2,reshard_root=true",
                 "--default", "big_units"]) == 0
    *variants, summary = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [v["variant"] for v in variants] == ["default", "big_units"]
    assert variants[1]["fsdp"] == {"blocks_per_unit": 2, "reshard_root": True}
    assert summary["variant"] == "big_units" and summary["speedup"] is None  # no baseline in this run
    for argv in (["--variants", "nope"], ["--define", "x:blocks_per_unit=0"], ["--define", "x:colour=red"]):
        with pytest.raises(SystemExit) as exc:
            main(["--smoke", *argv])
        assert exc.value.code == 2
