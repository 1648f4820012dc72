"""bench-train: exits 2 with one line without a GPU; --smoke runs the whole code path on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.bench.train import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_needs_gpu(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0]


def test_smoke_prints_one_json_line(capsys):
    assert main(["--smoke"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("samples_per_s", "mfu", "baseline_samples_per_s", "baseline_mfu", "peak_tflops", "speedup",
                "max_mem_gib", "device"):
        assert key in result
    assert result["samples_per_s"] > 0 and result["baseline_samples_per_s"] > 0 and result["flops_per_sample"] > 0
