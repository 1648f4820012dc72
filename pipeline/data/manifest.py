"""The curated output (the contract between curation and everything that reads it): one TFDS builder
directory per dataset, its ``manifest.json``, and the content hashes that key it.

Layout of a curated root (``vla curate out=ROOT``); :class:`CuratedDataset` is the one reader::

    ROOT/<dataset>/<CURATED_VERSION>/
        <dataset>-<split>.tfrecord-0000j-of-0000N   shards, features = curated_features(P)
        dataset_info.json, features.json            TFDS metadata (tfds.builder_from_directory)
        dataset_statistics.json                     {dataset: OpenVLA statistics}
        quarantine.json                             what curation dropped, by reason
        manifest.json                               written LAST: its presence means complete

Manifest layout::

    {
      "format": 2, "dataset": "bridge_orig", "version": "1.0.0",
      "split": "train",                                   # shards / totals: the TRAINING split
      "shards": [{"file": "bridge_orig-train.tfrecord-00000-of-00004", "episodes": 12,
                  "frames": 371, "sha256": "...",
                  "index": {"offsets": [...], "sizes": [...], "frames": [...]}  # optional, per record
                  }, ...],
      "total_episodes": int, "total_frames": int,
      "validation": {"split": "val", "source": "val" | "train[95%:]", "shards": [...],
                     "total_episodes": int, "total_frames": int},
      "source_splits": {"train": {"episodes": int, "use": "..."}, "test": {...}, ...},
      "statistics": {"computed_on": "...", "num_transitions": int, "num_trajectories": int},
      "source": {"url": ..., "fingerprint": "<sha256>", "shards": [{"file", "bytes", "episodes"}]},
      "code_version": "0.1.0", "standardization_version": "oxe-std-1",
      "config": {...curation knobs...}, "config_hash": "<sha256>",
      "stats_key": "<sha256 of source fingerprint + standardization version + filter config>",
      "proprio_dim": int,
      "quarantine": {"episodes_dropped": int, "frames_dropped": int, "episodes_held_out": int}
    }

No timestamps or host names: an interrupted and resumed run writes a byte-identical manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pipeline import fs
from pipeline.errors import UserError

__all__ = [
    "CURATED_VERSION",
    "MANIFEST_NAME",
    "STATISTICS_NAME",
    "QUARANTINE_NAME",
    "CuratedDataset",
    "curated_features",
    "content_hash",
    "source_fingerprint",
]

CURATED_VERSION = "1.0.0"
MANIFEST_NAME = "manifest.json"
STATISTICS_NAME = "dataset_statistics.json"
QUARANTINE_NAME = "quarantine.json"


def curated_features(proprio_dim: int) -> dict:
    """Type-string tree of the curated schema (contracts.md "Curated dataset")."""
    return {
        "steps": {
            "observation": {"image_primary": "string", "image_secondary": "string", "image_wrist": "string",
                            "proprio": f"Tensor({proprio_dim},) float32"},
            "action": "Tensor(7,) float32",
            "language_instruction": "Text",
            "is_first": "bool", "is_last": "bool", "is_terminal": "bool",
        },
        "episode_metadata": {"dataset_name": "Text", "episode_id": "Text", "source_file": "Text",
                             "source_index": "Tensor() int64"},
    }


@dataclass(frozen=True)
class CuratedDataset:
    """Dataset ``name`` of the curated root ``root`` (local or gs://), as curation wrote it."""

    root: str
    name: str

    @property
    def url(self) -> str:
        """The builder directory ``<root>/<name>/<CURATED_VERSION>``."""
        return fs.join(self.root, self.name, CURATED_VERSION)

    def file(self, name: str) -> str:
        return fs.join(self.url, name)

    def read_manifest(self) -> dict | None:
        """The manifest, or None while the dataset is not (completely) curated."""
        url = self.file(MANIFEST_NAME)
        return fs.read_json(url) if fs.exists(url) else None

    def is_curated(self) -> bool:
        return fs.exists(self.file(MANIFEST_NAME))

    def manifest(self) -> dict:
        manifest = self.read_manifest()
        if manifest is None:
            raise UserError(f"{self.file(MANIFEST_NAME)} not found: dataset '{self.name}' is not curated "
                            f"(run `vla curate out={self.root}`)")
        return manifest

    def shards(self, split: str = "train") -> list[tuple[str, dict]]:
        """``(url, manifest entry)`` of every shard of ``split`` (``train`` or ``val``), in manifest order."""
        manifest = self.manifest()
        listed = [*manifest.get("shards", []), *manifest.get("validation", {}).get("shards", [])]
        shards = [(self.file(s["file"]), s) for s in listed if f"-{split}.tfrecord-" in s["file"]]
        if not shards:
            raise UserError(f"{self.file(MANIFEST_NAME)}: no '{split}' shards listed for dataset '{self.name}'")
        return shards

    def counts(self, split: str = "train") -> tuple[int, int] | None:
        """``(frames, episodes)`` of ``split`` from the manifest (None when not curated)."""
        manifest = self.read_manifest()
        if manifest is None:
            return None
        entry = manifest if split == "train" else manifest.get("validation", {})
        return int(entry.get("total_frames", 0)), int(entry.get("total_episodes", 0))

    def statistics(self) -> dict:
        """``dataset_statistics.json``: ``{name: OpenVLA statistics}``."""
        url = self.file(STATISTICS_NAME)
        try:
            return fs.read_json(url)
        except FileNotFoundError:
            raise UserError(f"{url} not found: curate the dataset first (it writes {STATISTICS_NAME})") from None

    def num_transitions(self, statistics: dict | None = None) -> int:
        """OpenVLA's size of the dataset: ``num_transitions`` of its statistics (frames of split ``all``,
        before the episode filters), what size-balanced mixtures weight by. UserError when absent.
        ``statistics``: :meth:`statistics` when the caller has already read them."""
        entry = (self.statistics() if statistics is None else statistics).get(self.name)
        value = entry.get("num_transitions") if isinstance(entry, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"{self.file(STATISTICS_NAME)}: expected an integer '{self.name}.num_transitions' >= 0, "
                            f"got {value!r} (re-curate the dataset)")
        return value


def content_hash(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (dict keys sorted; non-JSON values by ``str``)."""
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
