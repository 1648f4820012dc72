"""``manifest.json`` of a curated dataset, source fingerprints and content hashes.

Manifest layout (written last by curation: its presence means the dataset is complete)::

    {
      "format": 1, "dataset": "bridge_orig", "version": "1.0.0",
      "split": "train",
      "shards": [{"file": "bridge_orig-train.tfrecord-00000-of-00004", "episodes": 12,
                  "frames": 371, "sha256": "..."}, ...],
      "total_episodes": int, "total_frames": int,
      "source": {"url": ..., "fingerprint": "<sha256>", "shards": [{"file", "bytes", "episodes"}]},
      "code_version": "0.1.0", "standardization_version": "oxe-std-1",
      "config": {...curation knobs...}, "config_hash": "<sha256>",
      "stats_key": "<sha256 of source fingerprint + standardization version + filter config>",
      "proprio_dim": int, "quarantine": {"episodes_dropped": int, "frames_dropped": int}
    }

No timestamps or host names: an interrupted and resumed run writes a byte-identical manifest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline import fs

__all__ = [
    "CURATED_VERSION",
    "MANIFEST_NAME",
    "curated_dir",
    "content_hash",
    "source_fingerprint",
    "read_manifest",
    "curated_counts",
    "shard_name",
]

CURATED_VERSION = "1.0.0"
MANIFEST_NAME = "manifest.json"


def curated_dir(out: str, dataset: str) -> str:
    return fs.join(out, dataset, CURATED_VERSION)


def shard_name(dataset: str, split: str, index: int, total: int) -> str:
    return f"{dataset}-{split}.tfrecord-{index:05d}-of-{total:05d}"


def content_hash(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_fingerprint(builder_dir: str, shard_urls: list[str]) -> tuple[str, list[dict]]:
    """Hash of the source's ``dataset_info.json`` plus the name and size of every shard read."""
    info_url = fs.join(builder_dir, "dataset_info.json")
    info = fs.read_bytes(info_url) if fs.exists(info_url) else b""
    filesystem, dir_path = fs.get_fs(builder_dir)
    listing = {fs.basename(e["name"]): int(e.get("size") or 0) for e in filesystem.ls(dir_path, detail=True)}
    shards = []
    for url in shard_urls:  # one listing instead of a metadata request per shard
        name = fs.basename(url)
        size = listing[name] if name in listing else int(fs.get_fs(url)[0].size(fs.get_fs(url)[1]))
        shards.append({"file": name, "bytes": size})
    digest = content_hash(hashlib.sha256(info).hexdigest(), shards)
    return digest, shards


def read_manifest(dataset_dir: str) -> dict | None:
    url = fs.join(dataset_dir, MANIFEST_NAME)
    return fs.read_json(url) if fs.exists(url) else None


def curated_counts(curated: str, dataset: str) -> tuple[int, int] | None:
    """``(frames, episodes)`` of a curated dataset from its manifest (None when not curated)."""
    manifest = read_manifest(curated_dir(curated, dataset))
    if manifest is None:
        return None
    return int(manifest["total_frames"]), int(manifest["total_episodes"])
