"""``python -m pipeline.bench.torch_api`` (the API probe of the GPU session script): every API the
training step uses is here, and its real FSDP2 checks tell torch 2.11's output walk apart."""

from __future__ import annotations

import torch
from train_helpers import use_torch_2_11_output_walk

from pipeline.bench.torch_api import probe


def test_installed_torch_has_everything():
    result = probe()
    assert result["ok"] and result["missing"] == [] and result["torch"] == torch.__version__
    assert result["fsdp_group_units"] and result["fsdp_namedtuple_outputs"]


def test_probe_sees_the_torch_2_11_walk(monkeypatch):
    use_torch_2_11_output_walk(monkeypatch)
    result = probe()
    assert result["fsdp_walks_dataclass_outputs"] is False  # the crash VLAOutput no longer depends on
    assert result["ok"] and result["fsdp_namedtuple_outputs"] and result["fsdp_group_units"]
