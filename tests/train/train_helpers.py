"""Helpers for the training tests: run `vla train` as real processes (torchrun for 2 ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# a tiny, fast, deterministic run on the synthetic source
BASE = [
    "data.source=synthetic", "per_device_batch=4", "optim.lr=1e-3", "metrics.progress=false",
    "metrics.tensorboard=false", "stop.accuracy=2.0", "model.llm_num_layers=1", "model.vision_depth=1",
]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    # the checkout first; what the caller adds stays (the GPU session script's unpacked wheels)
    path = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != ROOT]
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path), TF_CPP_MIN_LOG_LEVEL="3")
    return e


# set by torchrun / Ray in a worker: a child process must not inherit them from the test process
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID", "ROLE_RANK", "ROLE_WORLD_SIZE")


def run_train(args: list[str], nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m pipeline.train.main` (1 rank) or under torchrun (nproc ranks)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "pipeline.train.main", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pipeline.train.main", *args]
    return subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_cli(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    return subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def losses(run_dir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            out[rec["step"]] = rec["loss"]
    return out


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


# -- torch 2.11's FSDP2 output walk ------------------------------------------------------------------
def pytree_grad_tensors(tree) -> tuple:
    """The grad-requiring tensors pytree's ``tree_flatten`` finds (an unregistered dataclass is one
    opaque leaf: nothing inside it is found)."""
    import torch
    from torch.utils._pytree import tree_flatten

    return tuple(t for t in tree_flatten(tree)[0] if torch.is_tensor(t) and t.requires_grad)


def _pytree_replace_grad_tensors(tree, replacements):
    import torch
    from torch.utils._pytree import tree_flatten, tree_unflatten

    leaves, spec = tree_flatten(tree)
    return tree_unflatten([next(replacements) if torch.is_tensor(t) and t.requires_grad else t for t in leaves],
                          spec)


def use_torch_2_11_output_walk(monkeypatch) -> None:
    """Make FSDP2 find the tensors of a module's output (its pre-backward hook) and inputs (its
    post-backward hook) as torch 2.11 does: pytree ``tree_flatten`` only. Newer torch walks
    dataclasses too (``collect_grad_tensors``); that walk is put back to the pytree one here. On a
    torch that still has the pytree walk, nothing needs patching."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group, _fsdp_state

    if not hasattr(_fsdp_state, "collect_grad_tensors"):
        assert hasattr(_fsdp_state, "tree_flatten")  # this torch walks with pytree natively
        return
    monkeypatch.setattr(_fsdp_state, "collect_grad_tensors", pytree_grad_tensors)
    if hasattr(_fsdp_param_group, "collect_grad_tensors"):
        monkeypatch.setattr(_fsdp_param_group, "collect_grad_tensors", pytree_grad_tensors)
        monkeypatch.setattr(_fsdp_param_group, "replace_grad_tensors", _pytree_replace_grad_tensors)
