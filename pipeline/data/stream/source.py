"""Where the stream's episodes come from: one :class:`EpisodeSource` per mixture dataset.

:class:`CuratedSource` reads a curated dataset directory (contracts.md "Curated dataset"): the
per-shard record index (byte offset, size and steps of each record) comes from the manifest when it
carries one, else from one streaming scan cached locally under the shard's sha256; episodes are then
read by byte range, one request each, local or gs://. A record the scan finds corrupt (or one the
manifest lists but a truncated shard no longer holds) is left out (0 frames) and named in
``skipped_records``.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline import fs
from pipeline.data.io.errors import CorruptDataError, CorruptRecordError
from pipeline.data.io.example import decode_example
from pipeline.data.io.tfrecord import read_records, scan_records
from pipeline.data.manifest import STATISTICS_NAME, CuratedDataset, content_hash
from pipeline.data.schema import ACTION_DIM, CAMERA_SLOTS
from pipeline.data.stream.normalize import DatasetNorm, parse_dataset_norm
from pipeline.data.stream.plan import DatasetLayout

__all__ = ["Episode", "EpisodeSource", "CuratedSource"]

log = logging.getLogger("pipeline.stream")


@dataclass(slots=True)
class Episode:
    """What the stream keeps of one curated episode (encoded images of the chosen cameras only)."""

    episode_id: str
    images: dict[str, list[bytes]]  # slot -> T encoded images (b"" = missing camera)
    action: np.ndarray  # float32 [T, 7] raw (unnormalized)
    instruction: list[str]  # T

    @property
    def nbytes(self) -> int:
        return sum(len(b) for imgs in self.images.values() for b in imgs) + self.action.nbytes + 64 * len(self.instruction)


class EpisodeSource(Protocol):
    """One dataset as the stream sees it (CuratedSource implements it; tests may use others)."""

    name: str
    layout: DatasetLayout  # shards, frames per episode
    norm: DatasetNorm  # dataset_statistics.json entry
    num_transitions: int  # its num_transitions (split all): the size size-balanced mixtures weight by
    episode_bytes: np.ndarray  # int64 [episodes] estimated cache bytes per episode

    def read_episode(self, episode: int, cameras: Sequence[str]) -> Episode: ...  # CorruptDataError on bad bytes
    def describe(self, episode: int) -> str: ...  # "<shard url> record <k>" for messages


def _scan_shard(url: str) -> dict:
    """Record offsets/sizes and steps per record of one shard (corrupt records get 0 steps; records
    after a broken length header or a truncation are not listed). Memory: one record."""
    offsets, sizes, frames = [], [], []

    def warn(error: CorruptDataError) -> None:
        log.warning("%s; it is left out of the stream", error)

    for span in scan_records(url, on_error=warn):
        steps = 0
        if span.data is not None:
            try:
                steps = len(decode_example(span.data, skip=_IMAGE_KEYS).get("steps/is_first", []))
            except CorruptDataError as e:
                warn(CorruptRecordError(url, span.index, str(e)))
            if steps == 0:
                log.warning("%s: record %d holds no steps; it is left out of the stream", url, span.index)
        offsets.append(span.offset)
        sizes.append(span.size)
        frames.append(steps)
    return {"offsets": offsets, "sizes": sizes, "frames": frames}


_IMAGE_KEYS = frozenset(f"steps/observation/image_{s}" for s in CAMERA_SLOTS)


def _skipped_records(shards: list[tuple[str, dict]], index: list[dict]) -> list[str]:
    """"<url> record k" of every record the index left out (0 steps), and of records the manifest
    lists but the shard no longer holds (truncated file)."""
    out = []
    for (url, entry), idx in zip(shards, index):
        frames = list(idx["frames"])
        out += [f"{url} record {k}" for k, n in enumerate(frames) if n == 0]
        expected = int(entry.get("episodes", len(frames)))
        out += [f"{url} record {k} (missing: shard truncated)" for k in range(len(frames), expected)]
    return out


def _cache_dir(cfg_dir: str) -> str:
    return cfg_dir or os.path.join(os.path.expanduser("~"), ".cache", "vla-pipeline", "stream-index")


class CuratedSource:
    """One curated dataset (:class:`pipeline.data.manifest.CuratedDataset`, contracts.md "Curated dataset").

    The per-shard record index (byte offset, size and steps of each record) is taken from the
    manifest's shard entry when it carries ``"index": {"offsets", "sizes", "frames"}`` (lists, one
    value per record); otherwise it is computed by one streaming scan and cached locally under the
    shard's manifest sha256 (or its size). Episodes are then read by byte range: one request per
    episode, local or gs://.
    """

    def __init__(self, dataset: CuratedDataset, *, split: str = "train", index_cache_dir: str = "") -> None:
        self.name = name = dataset.name
        self.url = dataset.url
        shards = dataset.shards(split)
        cache = _cache_dir(index_cache_dir)
        index = [entry.get("index") or self._index(url, str(entry.get("sha256", "")), cache)
                 for url, entry in shards]
        self.shard_urls = tuple(u for u, _ in shards)
        self._offsets = [np.asarray(i["offsets"], np.int64) for i in index]
        self._sizes = [np.asarray(i["sizes"], np.int64) for i in index]
        self.layout = DatasetLayout(name=name, shard_urls=self.shard_urls,
                                    frames=tuple(np.asarray(i["frames"], np.int64) for i in index))
        self.episode_bytes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int64)
        statistics = dataset.statistics()  # one read for both
        self.norm = parse_dataset_norm(statistics, name, where=dataset.file(STATISTICS_NAME))
        self.num_transitions = dataset.num_transitions(statistics)
        self.skipped_records = _skipped_records(shards, index)
        if self.skipped_records:
            log.warning("dataset %s: %d corrupt or missing record(s) left out of the stream: %s", name,
                        len(self.skipped_records), "; ".join(self.skipped_records[:5]))

    @staticmethod
    def _index(url: str, sha: str, cache_dir: str) -> dict:
        key = sha or str(fs.get_fs(url)[0].size(fs.get_fs(url)[1]))
        name = content_hash(url, key)[:20] + ".json"
        path = os.path.join(cache_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        index = fs.retry(lambda: _scan_shard(url), url, what="index scan")  # a retry re-reads the shard
        fs.write_json(path, index, indent=None)
        return index

    def _locate(self, episode: int) -> tuple[int, int]:
        return int(self.layout.episode_shard[episode]), int(self.layout.episode_record[episode])

    def describe(self, episode: int) -> str:
        shard, record = self._locate(episode)
        return f"{self.shard_urls[shard]} record {record}"

    def read_episode(self, episode: int, cameras: Sequence[str]) -> Episode:
        """The episode's record, read by byte range; CorruptDataError when its bytes are not a curated episode."""
        shard, record = self._locate(episode)
        url = self.shard_urls[shard]
        start = int(self._offsets[shard][record])
        blob = fs.read_range(url, start, start + int(self._sizes[shard][record]))  # retried (fs.retry)
        data = next(iter(read_records(io.BytesIO(blob), name=f"{url} record {record}")), None)
        if data is None:  # an empty range: the shard lost this record since it was indexed
            raise CorruptRecordError(url, record, "missing: the shard is shorter than its index")
        wanted = {f"steps/observation/image_{c}" for c in cameras}
        return _curated_episode(decode_example(data, skip=_IMAGE_KEYS - wanted), cameras, url, record)


def _curated_episode(ex: dict, cameras: Sequence[str], url: str, record: int) -> Episode:
    """An :class:`Episode` from a decoded curated record; CorruptRecordError when it does not fit the
    curated features (a missing key, a step count or action width that does not match)."""
    def bad(reason: str) -> CorruptRecordError:
        return CorruptRecordError(url, record, f"not a curated episode: {reason}")

    missing = [k for k in ("steps/is_first", "steps/action", "steps/language_instruction") if k not in ex]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    steps = len(ex["steps/is_first"])
    action, text = ex["steps/action"], ex["steps/language_instruction"]
    if not isinstance(action, np.ndarray) or action.size != steps * ACTION_DIM:
        raise bad(f"steps/action has {np.size(action)} values, expected {steps} x {ACTION_DIM}")
    images = {}
    for c in cameras:
        column = ex.get(f"steps/observation/image_{c}", [b""] * steps)
        if isinstance(column, np.ndarray) or len(column) != steps:
            raise bad(f"steps/observation/image_{c} holds {len(column)} values for {steps} steps")
        images[c] = list(column)
    if isinstance(text, np.ndarray) or len(text) != steps:
        raise bad(f"steps/language_instruction holds {len(text)} values for {steps} steps")
    ep_id = ex.get("episode_metadata/episode_id", [f"{url}:{record}".encode()])
    if isinstance(ep_id, np.ndarray) or len(ep_id) != 1:
        raise bad("episode_metadata/episode_id is not one text value")
    try:
        instruction = [b.decode("utf-8") for b in text]
        episode_id = ep_id[0].decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"text that is not UTF-8: {e}") from None
    return Episode(episode_id=episode_id, images=images, instruction=instruction,
                   action=np.asarray(action, dtype=np.float32).reshape(steps, ACTION_DIM))
