"""Sharded safetensors folders (the Hugging Face layout), read and written over local paths and ``gs://``.

Layout: one ``model.safetensors``, or ``model-00001-of-0000N.safetensors`` shards plus
``model.safetensors.index.json`` (``{"metadata": {"total_size": bytes}, "weight_map": {key: shard}}``).

Reading never loads a whole folder: :class:`SafetensorsSource` learns every tensor's dtype and shape
from the shard headers (two small range reads per remote shard), then hands out tensors one at a
time: memory-mapped from local files, one ranged read per tensor from remote ones (nothing is
downloaded to disk). Writing (:func:`write_sharded`) converts one shard's tensors at a time.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable
from typing import Any

import torch

from pipeline import fs
from pipeline.errors import UserError

__all__ = ["INDEX_FILE", "SINGLE_FILE", "SafetensorsSource", "parse_size", "write_sharded"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str | int, *, key: str = "max_shard_size") -> int:
    """``"5GB"`` / ``"500MB"`` / ``"2GiB"`` / an int -> bytes (> 0)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise UserError(f"{key}={text!r}: expected a size such as 5GB, 500MB or 2GiB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
    if value <= 0:
        raise UserError(f"{key}={text!r}: must be > 0")
    return value


def _read_header(url: str) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    if fs.is_remote(url):
        (n,) = struct.unpack("<Q", fs.read_range(url, 0, 8))
        raw = fs.read_range(url, 8, 8 + n)
    else:
        with open(fs.get_fs(url)[1], "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{url}: not a safetensors file (unreadable header)") from e
    header.pop("__metadata__", None)
    return header, 8 + n


class SafetensorsSource:
    """The tensors of one safetensors file or folder (local, ``gs://``), read lazily.

    ``shapes``: {key: shape tuple}; ``dtypes``: {key: torch dtype}; ``get(key)`` -> CPU tensor.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._where: dict[str, tuple[str, dict[str, Any], int]] = {}  # key -> (file url, entry, data start)
        for file_url in self._files(url):
            header, start = _read_header(file_url)
            for key, entry in header.items():
                self._where[key] = (file_url, entry, start)
        self.shapes = {k: tuple(e["shape"]) for k, (_, e, _) in self._where.items()}
        self.dtypes = {k: _DTYPES.get(e["dtype"]) for k, (_, e, _) in self._where.items()}
        self._open: dict[str, Any] = {}

    @staticmethod
    def _files(url: str) -> list[str]:
        if url.endswith(".safetensors"):
            if not fs.exists(url):
                raise UserError(f"{url}: file not found")
            return [url]
        index = fs.join(url, INDEX_FILE)
        if fs.exists(index):
            weight_map = fs.read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise UserError(f"{index}: no weight_map (expected a Hugging Face shard index)")
            return [fs.join(url, name) for name in sorted(set(weight_map.values()))]
        single = fs.join(url, SINGLE_FILE)
        if fs.exists(single):
            return [single]
        raise UserError(f"{url}: no {SINGLE_FILE} or {INDEX_FILE} (expected safetensors weights)")

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> torch.Tensor:
        file_url, entry, start = self._where[key]
        if not fs.is_remote(file_url):
            from safetensors import safe_open

            if file_url not in self._open:
                self._open[file_url] = safe_open(fs.get_fs(file_url)[1], framework="pt", device="cpu")
            return self._open[file_url].get_tensor(key)
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise UserError(f"{file_url}: tensor {key} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        data = bytearray(fs.read_range(file_url, start + begin, start + end)) if end > begin else bytearray()
        return torch.frombuffer(data, dtype=dtype).reshape(entry["shape"]) if data else \
            torch.empty(entry["shape"], dtype=dtype)

    def close(self) -> None:
        self._open.clear()

    def __enter__(self) -> SafetensorsSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _nbytes(t: torch.Tensor, dtype: torch.dtype | None) -> int:
    return t.numel() * (torch.empty((), dtype=dtype or t.dtype).element_size())


def _plan_shards(items: list[tuple[str, torch.Tensor]], dtype: torch.dtype | None, limit: int) -> list[list[int]]:
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, t) in enumerate(items):
        n = _nbytes(t, dtype)
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return shards


def write_sharded(tensors: Iterable[tuple[str, torch.Tensor]], out_url: str, *, dtype: torch.dtype | None,
                  max_shard_bytes: int) -> list[str]:
    """Write ``(key, tensor)`` pairs into folder ``out_url`` (local or remote), floating-point tensors
    cast to ``dtype`` (None: kept). One ``model.safetensors`` when everything fits in one shard,
    else ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``. Returns the file
    names written. Shards are written before the index (a reader sees the index last)."""
    from safetensors.torch import save_file

    items = list(tensors)
    if not items:
        raise ValueError("write_sharded: no tensors")
    shards = _plan_shards(items, dtype, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    total = 0
    fs.makedirs(out_url)
    with tempfile.TemporaryDirectory(prefix="vla-shard-") as tmp:
        for name, idx in zip(names, shards):
            part = {}
            for i in idx:
                key, t = items[i]
                t = t.detach().to("cpu")
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                part[key] = t.contiguous()
                weight_map[key] = name
                total += part[key].numel() * part[key].element_size()
            local = os.path.join(tmp, name)
            save_file(part, local, metadata={"format": "pt"})
            del part
            fs.copy_file(local, fs.join(out_url, name))
            os.remove(local)
    if len(names) > 1:
        fs.write_json(fs.join(out_url, INDEX_FILE), {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names + ([INDEX_FILE] if len(names) > 1 else [])
