"""TFDS builder directories: the on-disk layout (version directories, shard file names) and
``open_builder``, which reads ``dataset_info.json`` + ``features.json`` (local or gs://, no TF).

API::

    ShardInfo(url: str, num_episodes: int)
    BuilderInfo(name, version, url, features: spec tree, splits: dict[str, list[ShardInfo]],
                description: str)                       # .num_episodes(split) -> int
    open_builder(url: str) -> BuilderInfo
        url = <root>/<name>/<version>, or <root>/<name> (highest version dir is picked).
    shard_filename(name, split, index, num_shards) -> "<name>-<split>.tfrecord-00000-of-0000N"
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

from pipeline import fs
from pipeline.data.io.features import parse_features_json
from pipeline.errors import UserError

__all__ = ["ShardInfo", "BuilderInfo", "open_builder", "shard_filename", "SHARD_TEMPLATE", "VERSION_RE"]

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # tfds' default file name template


@dataclass(frozen=True)
class ShardInfo:
    url: str
    num_episodes: int


@dataclass(frozen=True)
class BuilderInfo:
    name: str
    version: str
    url: str
    features: dict
    splits: dict[str, list[ShardInfo]]
    description: str = ""

    def num_episodes(self, split: str = "train") -> int:
        return sum(s.num_episodes for s in self.splits.get(split, []))


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def _resolve_version_dir(url: str) -> str:
    url = url.rstrip("/")
    if fs.exists(fs.join(url, "dataset_info.json")):
        return url
    if not fs.exists(url):
        parent, missing = url.rsplit("/", 1) if "/" in url else (".", url)
        if parent and fs.exists(parent):
            names = [fs.basename(c) for c in fs.listdir(parent)]
            close = difflib.get_close_matches(missing, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {parent} has: {', '.join(names[:10]) or 'nothing'}"
            raise UserError(f"dataset directory {url} not found{hint}")
        raise UserError(f"dataset directory {url} not found; check the data root and dataset name")
    versions = [fs.basename(c) for c in fs.listdir(url) if VERSION_RE.match(fs.basename(c))]
    versions = [v for v in versions if fs.exists(fs.join(url, v, "dataset_info.json"))]
    if not versions:
        raise UserError(f"dataset directory {url} has no <version>/dataset_info.json; expected e.g. {url}/1.0.0")
    return fs.join(url, max(versions, key=_version_key))


def shard_filename(name: str, split: str, index: int, num_shards: int, *, template: str = SHARD_TEMPLATE,
                   file_format: str = "tfrecord") -> str:
    """File name of shard ``index`` of ``num_shards`` (tfds' template; default
    ``<name>-<split>.tfrecord-00000-of-0000N``)."""
    return (template.replace("{DATASET}", name).replace("{SPLIT}", split).replace("{FILEFORMAT}", file_format)
            .replace("{SHARD_X_OF_Y}", f"{index:05d}-of-{num_shards:05d}")
            .replace("{SHARD_INDEX}", f"{index:05d}").replace("{NUM_SHARDS}", f"{num_shards:05d}"))


def open_builder(url: str) -> BuilderInfo:
    """Read ``dataset_info.json`` + ``features.json`` of a TFDS builder directory (local or gs://)."""
    vdir = _resolve_version_dir(str(url))
    info = fs.read_json(fs.join(vdir, "dataset_info.json"))
    features_url = fs.join(vdir, "features.json")
    if not fs.exists(features_url):
        raise UserError(f"{features_url} not found; the builder directory {vdir} is incomplete")
    features = parse_features_json(fs.read_json(features_url))
    name = info.get("name") or fs.basename(os.path.dirname(vdir.rstrip("/")))
    file_format = info.get("fileFormat", "tfrecord")
    if file_format != "tfrecord":
        raise UserError(f"{vdir}: fileFormat {file_format!r} is not supported; expected tfrecord")
    splits: dict[str, list[ShardInfo]] = {}
    for split in info.get("splits", []):
        lengths = [int(x) for x in split.get("shardLengths", [])]
        template = split.get("filepathTemplate") or SHARD_TEMPLATE
        splits[split["name"]] = [
            ShardInfo(fs.join(vdir, shard_filename(name, split["name"], i, len(lengths), template=template,
                                                   file_format=file_format)), n)
            for i, n in enumerate(lengths)]
    return BuilderInfo(name=name, version=str(info.get("version", fs.basename(vdir))), url=vdir,
                       features=features, splits=splits, description=info.get("description", ""))

