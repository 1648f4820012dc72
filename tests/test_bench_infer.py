"""bench-infer: exits 2 with one line without a GPU; --smoke runs the whole code path on CPU
(tiny preset in fp32 and bf16, demo-model training, export, reload, token agreement)."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.bench.infer import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_needs_gpu(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench-infer needs a CUDA GPU" in err[0]


@pytest.mark.slow
def test_smoke_prints_one_json_line(capsys):
    assert main(["--smoke"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["device"] == "cpu (smoke)" and result["preset"] == "tiny"
    for mode in ("fp32", "bf16"):
        assert result[f"{mode}_hz"] > 0 and result[f"{mode}_latency_ms"] > 0
        assert result["speed"][mode]["params"] > 0
    agreement = result["agreement"]
    assert agreement["reference"] == "fp32" and 0.0 <= result["bf16_token_agreement"] <= 1.0
    assert set(agreement["accuracy"]) == {"fp32", "bf16"} and agreement["train"]["steps"] == 2
