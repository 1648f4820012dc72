"""FSDP2 over gloo with 2 real ranks (torchrun): full and hybrid meshes (with and without activation
checkpointing, fp32 and bf16 params) match an unsharded single-process model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from train_helpers import ROOT, env


@pytest.mark.slow
def test_fsdp_full_and_hybrid_match_reference(tmp_path):
    out = tmp_path / "report.json"
    worker = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           worker, str(out)], env=env(), cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(out.read_text())
    full, hybrid, bf16 = report["full"], report["hybrid"], report["full_bf16"]
    assert full["mesh"] == [2] and hybrid["mesh"] == [2, 1]
    for case in (full, hybrid, report["full_ac"], report["hybrid_selective_ac"]):
        assert case["all_dtensor"]
        assert abs(case["loss"] - case["ref_loss"]) < 1e-5
        assert case["grad_err"] < 1e-5 and case["param_err"] < 1e-5
        assert abs(case["norm"] - case["ref_norm"]) < 1e-4 * case["ref_norm"]  # clipped grads compared above
    assert full["local_numel"] < 0.6 * full["full_numel"]  # sharded in half (+ padding)
    assert hybrid["local_numel"] == hybrid["full_numel"]  # one rank per node: replicated
    assert abs(bf16["loss"] - bf16["ref_loss"]) < 0.05 * bf16["ref_loss"] and bf16["param_err"] < 5e-3
