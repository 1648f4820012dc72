"""Sharded safetensors folders: shard planning, index, dtype casting, lazy reads (local mmap, gs:// ranges)."""

from __future__ import annotations

import pytest
import torch

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.safetensors_io import INDEX_FILE, SafetensorsSource, parse_size, write_sharded


@pytest.mark.parametrize("text, value", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                         ("1.5kb", 1500), ("123", 123), (7, 7)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["five", "0GB", "-1", "5 TB"])
def test_parse_size_errors(text):
    with pytest.raises(UserError, match="max_shard_size"):
        parse_size(text)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(64, 32, generator=g), "b.bias": torch.randn(100, generator=g),
            "c.count": torch.arange(10), "d.weight": torch.randn(3, 5, 7, generator=g)}


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_write_and_read_shards(where, tmp_path, request):
    url = str(tmp_path / "w") if where == "local" else request.getfixturevalue("gcs_bucket") + "/w"
    state = _state()
    files = write_sharded(state.items(), url, dtype=torch.bfloat16, max_shard_bytes=300)  # a | b c | d
    assert files == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                     "model-00003-of-00003.safetensors", INDEX_FILE]
    index = fs.read_json(fs.join(url, INDEX_FILE))
    assert set(index["weight_map"]) == set(state) and index["metadata"]["total_size"] == 2 * (2048 + 100 + 105) + 8 * 10
    with SafetensorsSource(url) as src:
        assert src.shapes == {k: tuple(v.shape) for k, v in state.items()}
        assert src.dtypes["a.weight"] == torch.bfloat16 and src.dtypes["c.count"] == torch.int64  # ints kept
        for k, v in state.items():
            want = v.to(torch.bfloat16) if v.is_floating_point() else v
            assert torch.equal(src.get(k), want), k


def test_one_shard_is_model_safetensors(tmp_path):
    files = write_sharded(_state().items(), str(tmp_path), dtype=None, max_shard_bytes=10**9)
    assert files == ["model.safetensors"]
    with SafetensorsSource(str(tmp_path / "model.safetensors")) as src:  # a file works as well as a folder
        assert torch.equal(src.get("a.weight"), _state()["a.weight"])


def test_missing_weights_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"no model.safetensors or model.safetensors.index.json"):
        SafetensorsSource(str(tmp_path))
    (tmp_path / "bad.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(UserError, match="not a safetensors file"):
        SafetensorsSource(str(tmp_path / "bad.safetensors"))
