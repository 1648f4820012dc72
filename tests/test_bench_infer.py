"""bench-infer: exits 2 with one line without a GPU; --smoke runs the whole code path on CPU (tiny
preset in fp32 and bf16, fast and plain decoders, a real server for the overhead, demo-model
training, export, reload, token agreement) in a fresh interpreter that cannot import omegaconf,
ray, tensorflow, gcsfs or bitsandbytes, as on the GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.bench.infer import main

ROOT = Path(__file__).resolve().parents[1]
GPU_MACHINE_LACKS = ("omegaconf", "ray", "tensorflow", "gcsfs", "bitsandbytes")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_needs_gpu(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench-infer needs a CUDA GPU" in err[0]


@pytest.mark.slow
def test_smoke_prints_one_json_line_on_the_gpu_machines_software():
    code = textwrap.dedent(f"""
        import sys
        for name in {GPU_MACHINE_LACKS!r}:
            sys.modules[name] = None  # `import name` now raises ImportError
        import torch
        torch.set_num_threads(1)
        from pipeline.bench.infer import main
        code = main(["--smoke"])
        sys.stdout.flush()
        print("imported:", [n for n in {GPU_MACHINE_LACKS!r} if sys.modules.get(n) is not None], file=sys.stderr)
        sys.exit(code)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported: []" in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["device"] == "cpu (smoke)" and result["preset"] == "tiny"
    assert result["torch"] == torch.__version__ and result["transformers"]
    for mode in ("fp32", "bf16"):
        assert result[f"{mode}_hz"] > 0 and result[f"{mode}_latency_ms"] > 0 and result[f"{mode}_decode"] == "eager"
        assert result[f"{mode}_pixels_equal"] is True
        assert result["speed"][mode]["params"] > 0
    assert result["fp32_plain_hz"] > 0 and result["speed"]["fp32"]["plain_agreement"] == 1.0
    for style in ("json_numpy", "jpeg"):
        assert result[f"serve_{style}_overhead_ms"] > 0 and result[f"serve_{style}_model_ms"] > 0
    agreement = result["agreement"]
    assert agreement["reference"] == "fp32 plain" and agreement["train"]["steps"] == 2
    assert result["fp32_token_agreement"] == 1.0 and result["fp32_eager_token_agreement"] == 1.0
    assert 0.0 <= result["bf16_token_agreement"] <= 1.0
    assert set(agreement["accuracy"]) == {"fp32_plain", "fp32", "bf16", "fp32_eager"}
