"""Training stream: curated datasets + mixture -> rank-disjoint, resumable training batches, forever.

Flow (one rank)::

    epoch plan (sampling.py: global order of (dataset, episode, frame) for epoch e)
      -> this rank's positions (lockstep global batches of world_size * batch_size)
      -> episode cache (I/O threads read whole episodes by byte range, ENCODED images only;
         bounded by ``buffer_bytes``; an episode is dropped after this rank's last use of it)
      -> decode/resize/augment (frames.py) in ``num_workers`` processes, batch k on any worker,
         results taken back in batch order (output independent of worker count)
      -> BOUNDS_Q99 action normalization (normalize.py) + prompt builder + collate -> batch

EPOCH DEFINITION: see ``pipeline.data.sampling`` (one epoch = E = sum_i N_i draws; dataset i gets
round(share_i * E) of them, walking seeded windowed permutations of its frames, wrapping or
truncating). The window W_i (episodes "live" at once in dataset i's permutation) is derived from
``buffer_bytes``: W_i = max(1, 1.5 * buffer_bytes * share_i / mean episode bytes of dataset i)
(frames are freed as they are used, so on average half of each live episode is held), so
the plan depends on ``buffer_bytes`` and the data, never on world size, rank or worker count.

RANK SHARDING / STATE: position = global samples consumed in the epoch. Global batch at position p
gives rank r the positions [p + r*B, p + (r+1)*B). When fewer than world_size*B positions remain
the epoch ends; that tail (< one global batch) is dropped for the epoch and counted in
``stats["dropped_tail_samples"]``. ``state_dict()`` = {version, seed, world_size, rank, batch_size,
mixture_hash, plan_hash, epoch, position}; restoring at another world size (or batch size)
resumes the same epoch at the same global position, so each planned frame is still used once.

FAILURES: an episode that fails to read (CRC mismatch, malformed record) is counted in
``stats["corrupt_episodes"]`` with a warning naming the shard and record; its samples are replaced
by the previous good sample of the same batch (the next one for the first), counted in
``stats["replaced_samples"]``; a batch with no readable sample repeats the last good sample of
the stream (UserError if there is none yet). An image that fails to decode becomes zeros
(``stats["bad_images"]``, the warning names shard and record). ``stats`` are per process and not part
of the state. A record found corrupt by the index scan (or listed by the manifest but cut off a
truncated shard) is left out of the plan (0 frames), counted in ``stats["skipped_records"]`` and
named in a warning.

DETAILS: the per-shard record index (offset, size, steps of each record) is built by one streaming
scan and cached locally (``index_cache_dir``) under the manifest's shard sha256. Decode workers are
``spawn`` processes (the launching script's ``__main__`` is re-imported in them: guard it with
``if __name__ == "__main__"``); each writes its batch into one slot of a ring file under /dev/shm
that the workers keep open and the training process keeps mapped (no pickling of pixel arrays, no
fresh pages per batch): the resized uint8 frames without augmentation (scaled to float32 by the
training process, bit-identical to decoding in-process), the float32 frames with it. The ring has
``prefetch_batches + 1`` slots used in turn: at most that many batches are in flight, so a slot comes
round again only after its batch was consumed (checked) or abandoned by ``load_state_dict`` (its
task is waited for before the slot is rewritten).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipeline import fs
from pipeline.config import helpfield
from pipeline.data.frames import decode_batch, read_ring_slot
from pipeline.data.normalize import DatasetNorm, load_dataset_norm, normalize_bounds_q99
from pipeline.data.sampling import (
    DatasetLayout,
    EpochPlan,
    build_epoch_plan,
    compute_shares,
    largest_remainder,
)
from pipeline.data.schema import CAMERA_SLOTS
from pipeline.errors import ConfigError, UserError

__all__ = ["StreamConfig", "Episode", "EpisodeSource", "CuratedSource", "TrainingStream", "STATE_VERSION"]

log = logging.getLogger("pipeline.stream")
_NO_PIXELS = np.zeros((0,), dtype=np.float32)
STATE_VERSION = 1


@dataclass(kw_only=True)
class StreamConfig:
    """How the stream reads and decodes (what to read and the run's batch size, seed and image size
    are arguments of :class:`TrainingStream`). Checked here: a bad value is a ConfigError."""

    cameras: list[str] = helpfield(["primary"], "camera slots fed to the model; first = pixel_values")
    augment: bool = helpfield(False, "train-time image augmentation (crop 0.9, color jitter)")
    buffer_bytes: int = helpfield(512 * 2**20, "episode cache budget per rank in bytes (encoded images)")
    num_workers: int = helpfield(2, "decode processes (0 = decode in the training process)")
    prefetch_batches: int = helpfield(4, "batches decoded ahead of the consumer")
    io_threads: int = helpfield(4, "threads reading episodes from storage")
    split: str = helpfield("train", "curated split to read")
    index_cache_dir: str = helpfield("", "local cache of per-shard record indexes ('' = ~/.cache/vla-pipeline)")

    def __post_init__(self) -> None:
        checks = [("buffer_bytes", self.buffer_bytes >= 2**20, ">= 1 MiB"),
                  ("num_workers", self.num_workers >= 0, ">= 0"),
                  ("prefetch_batches", self.prefetch_batches >= 1, ">= 1"),
                  ("io_threads", self.io_threads >= 1, ">= 1")]
        for key, ok, need in checks:
            if not ok:
                raise ConfigError(key, getattr(self, key), f"must be {need}")
        bad = [c for c in self.cameras if c not in CAMERA_SLOTS]
        if bad or not self.cameras:
            raise ConfigError("cameras", self.cameras, f"pick one or more of {list(CAMERA_SLOTS)}")


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
    episode_bytes: np.ndarray  # int64 [episodes] estimated cache bytes per episode

    def read_episode(self, episode: int, cameras: Sequence[str]) -> Episode: ...  # raises on corrupt data
    def describe(self, episode: int) -> str: ...  # "<shard url> record <k>" for messages


# ------------------------------------------------------------------------------------- curated data
def _scan_shard(url: str) -> dict:
    """Record offsets/sizes and steps per record of one shard (corrupt records get 0 steps).

    Streams the file record by record (memory: one record).
    """
    from pipeline.data.tfrecord import decode_example, masked_crc32c

    offsets, sizes, frames, pos = [], [], [], 0
    with fs.open_url(url, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                if header:
                    log.warning("%s: record %d is truncated (length header); it is left out of the stream",
                                url, len(offsets))
                break
            length = int.from_bytes(header[:8], "little")
            if int.from_bytes(header[8:], "little") != masked_crc32c(header[:8]):
                log.warning("%s: record %d has a corrupt length header; ignoring the rest of the shard",
                            url, len(offsets))
                break
            body = f.read(length + 4)
            steps = 0
            if len(body) == length + 4 and int.from_bytes(body[length:], "little") == masked_crc32c(body[:length]):
                try:
                    steps = len(decode_example(body[:length], skip=_IMAGE_KEYS).get("steps/is_first", []))
                except ValueError:
                    steps = 0
            if steps == 0:
                log.warning("%s: record %d is corrupt or empty; it is left out of the stream", url, len(offsets))
            offsets.append(pos)
            sizes.append(12 + length + 4)
            frames.append(steps)
            pos += 12 + length + 4
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
    """A curated dataset directory ``<root>/<name>/1.0.0/`` (contracts.md "Curated dataset").

    The per-shard record index (byte offset, size and steps of each record) is taken from the
    manifest's shard entry when it carries ``"index": {"offsets", "sizes", "frames"}`` (lists, one
    value per record); otherwise it is computed by one streaming scan and cached locally under the
    shard's manifest sha256 (or its size). Episodes are then read by byte range: one request per
    episode, local or gs://.
    """

    def __init__(self, root: str, name: str, *, split: str = "train", version: str = "1.0.0",
                 index_cache_dir: str = "") -> None:
        self.name = name
        self.url = fs.join(root, name, version)
        shards = self._shards(split)
        cache = _cache_dir(index_cache_dir)
        index = [entry.get("index") or self._index(url, str(entry.get("sha256", "")), cache)
                 for url, entry in shards]
        self.shard_urls = tuple(u for u, _ in shards)
        self._offsets = [np.asarray(i["offsets"], np.int64) for i in index]
        self._sizes = [np.asarray(i["sizes"], np.int64) for i in index]
        self.layout = DatasetLayout(name=name, shard_urls=self.shard_urls,
                                    frames=tuple(np.asarray(i["frames"], np.int64) for i in index))
        self.episode_bytes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int64)
        self.norm = load_dataset_norm(fs.join(self.url, "dataset_statistics.json"), name)
        self.skipped_records = _skipped_records(shards, index)
        if self.skipped_records:
            log.warning("dataset %s: %d corrupt or missing record(s) left out of the stream: %s", name,
                        len(self.skipped_records), "; ".join(self.skipped_records[:5]))

    def _shards(self, split: str) -> list[tuple[str, dict]]:
        manifest_url = fs.join(self.url, "manifest.json")
        if not fs.exists(manifest_url):
            raise UserError(f"{manifest_url} not found: dataset '{self.name}' is not curated (run `vla curate`)")
        manifest = fs.read_json(manifest_url)
        shards = [(fs.join(self.url, s["file"]), s) for s in manifest.get("shards", [])
                  if f"-{split}.tfrecord-" in s["file"]]
        if not shards:
            raise UserError(f"{manifest_url}: no '{split}' shards listed for dataset '{self.name}'")
        return shards

    @staticmethod
    def _index(url: str, sha: str, cache_dir: str) -> dict:
        key = sha or str(fs.get_fs(url)[0].size(fs.get_fs(url)[1]))
        name = hashlib.sha1(f"{url}|{key}".encode()).hexdigest()[:20] + ".json"
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
        from pipeline.data.tfrecord import decode_example, read_records

        shard, record = self._locate(episode)
        url = self.shard_urls[shard]
        start = int(self._offsets[shard][record])
        blob = fs.read_range(url, start, start + int(self._sizes[shard][record]))  # retried (fs.retry)
        data = next(iter(read_records(io.BytesIO(blob), name=f"{url} record {record}")))
        wanted = {f"steps/observation/image_{c}" for c in cameras}
        ex = decode_example(data, skip=_IMAGE_KEYS - wanted)
        steps = len(ex["steps/is_first"])
        images = {c: list(ex.get(f"steps/observation/image_{c}", [b""] * steps)) for c in cameras}
        action = np.asarray(ex["steps/action"], dtype=np.float32).reshape(steps, -1)
        instr = [b.decode("utf-8") for b in ex["steps/language_instruction"]]
        ep_id = ex.get("episode_metadata/episode_id", [f"{url}:{record}".encode()])[0].decode("utf-8")
        return Episode(episode_id=ep_id, images=images, action=action, instruction=instr)


# ------------------------------------------------------------------------------------ episode cache
# cache key of one (dataset, pass, episode): an episode is read again in a later pass of the same
# epoch (wrap-around) instead of staying pinned in memory between passes.
def _make_keys(ds: np.ndarray, passes: np.ndarray, ep: np.ndarray) -> np.ndarray:
    return (((ds.astype(np.int64) << 16) | passes.astype(np.int64)) << 32) | ep.astype(np.int64)


def _split_key(key: int) -> tuple[int, int]:
    """(dataset index, dataset-local episode index)."""
    return key >> 48, key & 0xFFFFFFFF


class _EpisodeCache:
    """Reads this rank's episodes of one epoch in first-use order, within ``buffer_bytes``.

    An episode is submitted to the I/O threads when its estimated bytes fit the budget or when the
    batch being built needs it. Only the frames this rank uses are kept (other images are dropped
    right after the read) and counted; each use frees that frame's bytes, and the episode is
    dropped after its last use. Per-rank memory therefore shrinks ~1/world_size at a fixed window.
    """

    def __init__(self, stream: TrainingStream, keys: np.ndarray, frames: np.ndarray) -> None:
        self._s = stream
        uniq, first, inverse, uses = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        rank_of = np.empty(len(uniq), dtype=np.int64)
        rank_of[order] = np.arange(len(uniq))
        self.sample_slot = rank_of[inverse.reshape(-1)]  # [samples] -> slot in first-use order
        self._keys, self._first = uniq[order], first[order]
        self._uses = uses[order]
        by_slot = np.argsort(self.sample_slot, kind="stable")
        self._slot_frames = frames[by_slot]  # frames this rank uses, grouped by slot
        self._slot_start = np.concatenate([[0], np.cumsum(self._uses)[:-1]]).astype(np.int64)
        self._frame_bytes = stream._frame_bytes(self._keys)
        self._left = self._uses.copy()
        self._next = 0
        self._live = 0
        self._futures: dict[int, Future] = {}

    def pump(self, need_upto: int) -> None:
        budget = self._s.cfg.buffer_bytes
        while self._next < len(self._keys):
            i = self._next
            est = int(self._frame_bytes[i] * self._uses[i])
            if self._first[i] >= need_upto and self._live + est > budget:
                break
            used = self._slot_frames[self._slot_start[i]:self._slot_start[i] + self._uses[i]]
            self._futures[i] = self._s._io.submit(self._load, int(self._keys[i]), used)
            self._live += est
            self._next += 1
        self._s.stats["peak_cache_bytes"] = max(self._s.stats["peak_cache_bytes"], self._live)

    def _load(self, key: int, used: np.ndarray) -> Episode | None:
        """Read one episode and keep only the images of the frames this rank uses."""
        episode = self._s._read(key)
        if episode is not None:
            keep = np.zeros(len(episode.instruction), dtype=bool)
            keep[used] = True
            for imgs in episode.images.values():
                for t in np.flatnonzero(~keep[: len(imgs)]).tolist():
                    imgs[t] = b""
        return episode

    def take(self, slot: int, frame: int) -> tuple[Episode | None, tuple[bytes, ...]]:
        """The episode of ``slot`` and frame ``frame``'s images (then freed from the cache)."""
        episode = self._futures[slot].result()
        images: tuple[bytes, ...] = ()
        if episode is not None:
            images = tuple(episode.images[c][frame] for c in self._s.cfg.cameras)
            for c in self._s.cfg.cameras:
                episode.images[c][frame] = b""
        self._live -= int(self._frame_bytes[slot])
        self._left[slot] -= 1
        if self._left[slot] == 0:
            self._futures.pop(slot)
        return episode, images


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ stream
class TrainingStream:
    """Infinite iterator of training batches for one rank (contracts.md "Training batch").

    Args:
        cfg: :class:`StreamConfig`.
        data_root: curated output root (local dir or gs://), holds ``<dataset>/1.0.0/``.
        mixture: a ``Mixture``, or a mixture name / YAML path (``load_mixture``).
        batch_size: samples per rank per step (global batch = world_size * batch_size).
        seed: seed of the epoch plans and of the augmentation draws.
        resolution: model image size (square), Lanczos resize.
        rank, world_size: this process's data-parallel rank and the number of ranks.
        prompt_builder: callable sample -> sample adding ``input_ids``/``labels`` (e.g.
            ``pipeline.model.prompt.ActionPromptBuilder``); reads ``language_instruction`` and the
            normalized ``action``.
        pad_id: padding id for ``input_ids`` (default: the builder's ``text_tokenizer.pad_token_id``).
        sources: one :class:`EpisodeSource` per mixture dataset (default: :class:`CuratedSource`).
    """

    def __init__(self, cfg: StreamConfig, *, data_root: str, mixture: Any, batch_size: int, seed: int,
                 resolution: int, rank: int, world_size: int, prompt_builder: Callable[[dict], dict],
                 pad_id: int | None = None, sources: Sequence[EpisodeSource] | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        for key, value in (("batch_size", batch_size), ("resolution", resolution)):
            if value < (1 if key == "batch_size" else 8):
                raise ValueError(f"{key}={value}: must be >= {1 if key == 'batch_size' else 8}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.batch_size, self.seed, self.resolution = batch_size, seed, resolution
        self._builder = prompt_builder
        self._pad_id = pad_id if pad_id is not None else int(prompt_builder.text_tokenizer.pad_token_id)
        if isinstance(mixture, str):
            from pipeline.data.mixtures import load_mixture

            mixture = load_mixture(mixture)
        names = [n for n, w in mixture.datasets.items() if w > 0]
        if sources is None:
            sources = [CuratedSource(data_root, n, split=cfg.split, index_cache_dir=cfg.index_cache_dir)
                       for n in names]
        self._sources = list(sources)
        self.dataset_names = [s.name for s in self._sources]
        sizes = [s.layout.num_frames for s in self._sources]
        weights = [float(mixture.datasets[n]) for n in self.dataset_names]
        self.shares = compute_shares(weights, sizes, bool(mixture.balance_by_size))
        self.counts = largest_remainder(self.shares, int(sum(sizes)))
        self.windows = [self._window(s, share) for s, share in zip(self._sources, self.shares)]
        self.mixture_hash = _hash({"names": self.dataset_names, "weights": weights, "sizes": sizes,
                                   "balance": bool(mixture.balance_by_size)})
        self.plan_hash = _hash({"mixture": self.mixture_hash, "windows": self.windows, "counts": self.counts.tolist()})
        if self.epoch_length() < self.global_batch:
            raise UserError(f"mixture {mixture.name}: an epoch has {self.epoch_length()} frames, fewer than one "
                            f"global batch ({world_size} x batch_size={batch_size}); lower batch_size")
        self.epoch, self.position = 0, 0
        self.stats = {"corrupt_episodes": 0, "replaced_samples": 0, "bad_images": 0, "dropped_tail_samples": 0,
                      "peak_cache_bytes": 0,
                      "skipped_records": sum(len(getattr(s, "skipped_records", ())) for s in self._sources)}
        self._plan: EpochPlan | None = None
        self._gen: Iterator | None = None
        self._pool: Any = None
        self._shm_dir: str | None = None
        self._ring: Any = None  # (path, mmap, slots, slot_bytes) of the decode workers' output ring
        self._ring_next = 0
        self._ring_tasks: dict[int, tuple[Any, int]] = {}  # slot -> (unconsumed task, generator number)
        self._gen_number = 0
        self._io = ThreadPoolExecutor(max_workers=cfg.io_threads, thread_name_prefix="stream-io")
        self._last_good: dict | None = None
        self._closed = False

    # -- plan -------------------------------------------------------------------------------------
    def _window(self, source: EpisodeSource, share: float) -> int:
        mean = float(np.mean(source.episode_bytes)) if len(source.episode_bytes) else 1.0
        # live episodes hold ~half their frames on average (frames are freed as used): a window of
        # 1.5 x budget / episode bytes fills ~3/4 of the budget and leaves the rest for read-ahead
        return max(1, int(1.5 * self.cfg.buffer_bytes * share / max(mean, 1.0)))

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def epoch_length(self) -> int:
        return int(self.counts.sum())

    def plan(self, epoch: int) -> EpochPlan:
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = build_epoch_plan([s.layout for s in self._sources], self.counts, seed=self.seed,
                                          epoch=epoch, windows=self.windows)
        return self._plan

    def _frame_bytes(self, keys: np.ndarray) -> np.ndarray:
        """Estimated cache bytes of one frame of each keyed episode (record bytes / steps)."""
        ds, ep = keys >> 48, keys & 0xFFFFFFFF
        out = np.zeros(len(keys), dtype=np.int64)
        for d, src in enumerate(self._sources):
            sel = ds == d
            out[sel] = src.episode_bytes[ep[sel]] // np.maximum(1, src.layout.episode_frames[ep[sel]])
        return out

    def _read(self, key: int) -> Episode | None:
        ds, ep = _split_key(key)
        try:
            return self._sources[ds].read_episode(ep, self.cfg.cameras)
        except fs.StorageUnavailable:  # storage down past the retry budget: fail, never skip silently
            raise
        except Exception as e:  # corrupt bytes, CRC mismatch, malformed record
            self.stats["corrupt_episodes"] += 1
            log.warning("[rank %d] skipping corrupt episode %s: %s", self.rank, self._sources[ds].describe(ep),
                        str(e).splitlines()[0])
            return None

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> TrainingStream:
        return self

    def __next__(self) -> dict:
        if self._closed:
            raise RuntimeError("TrainingStream is closed")
        if self._gen is None:
            self._gen_number += 1
            self._gen = self._run(self.epoch, self.position)
        batch, self.epoch, self.position = next(self._gen)
        return batch

    def _run(self, epoch: int, position: int) -> Iterator[tuple[dict, int, int]]:
        while True:
            yield from self._run_epoch(epoch, position)
            epoch, position = epoch + 1, 0

    def _run_epoch(self, epoch: int, position: int) -> Iterator[tuple[dict, int, int]]:
        plan, b, g = self.plan(epoch), self.batch_size, self.global_batch
        steps = (len(plan) - position) // g
        self.stats["dropped_tail_samples"] += max(0, len(plan) - position - steps * g)
        if steps <= 0:
            return
        starts = position + g * np.arange(steps, dtype=np.int64)
        pos = (starts[:, None] + self.rank * b + np.arange(b)).reshape(-1)
        ds, fr = plan.dataset[pos], plan.frame[pos]
        cache = _EpisodeCache(self, _make_keys(ds, plan.pass_index[pos], plan.episode[pos]), fr)
        pending: deque = deque()
        for k in range(steps):
            sl = slice(k * b, (k + 1) * b)
            cache.pump(need_upto=(k + 1) * b)
            samples = self._gather(cache, cache.sample_slot[sl], ds[sl], fr[sl], pos[sl])
            pending.append((self._submit(samples, epoch), samples, epoch, int(starts[k]) + g))
            if len(pending) > self.cfg.prefetch_batches:
                yield self._finish(*pending.popleft())
        while pending:
            yield self._finish(*pending.popleft())

    def _gather(self, cache: _EpisodeCache, slots, ds, fr, pos) -> list[dict]:
        samples: list[dict | None] = []
        for slot, d, f, p in zip(slots.tolist(), ds.tolist(), fr.tolist(), pos.tolist()):
            episode, images = cache.take(slot, f)
            key = int(cache._keys[slot])
            if episode is None:
                samples.append(None)
                continue
            src = self._sources[d]
            samples.append({
                "position": p,
                "images": images,
                "action": normalize_bounds_q99(episode.action[f], src.norm.action),
                "language_instruction": episode.instruction[f],
                "dataset_index": d,
                "meta": (src.name, episode.episode_id, f),
                "episode": _split_key(key)[1],  # dataset-local index, for messages (describe)
            })
        return self._replace_bad(samples)

    def _replace_bad(self, samples: list[dict | None]) -> list[dict]:
        good = [s for s in samples if s is not None]
        if len(good) == len(samples):
            self._last_good = samples[-1]
            return samples  # type: ignore[return-value]
        fallback = good[0] if good else self._last_good
        if fallback is None:
            raise UserError("training stream: every episode of the first batch is unreadable; check the curated data")
        out, prev = [], fallback
        for s in samples:
            if s is None:
                self.stats["replaced_samples"] += 1
                s = prev
            out.append(s)
            prev = s
        self._last_good = out[-1]
        return out

    # -- decode workers ---------------------------------------------------------------------------
    def _decode_args(self, samples: list[dict], epoch: int) -> tuple[list, dict]:
        items = [(s["position"], s["images"]) for s in samples]
        res = self.resolution
        return items, {"size": (res, res), "augment": self.cfg.augment, "seed": self.seed, "epoch": epoch}

    def _submit(self, samples: list[dict], epoch: int) -> Any:
        items, kwargs = self._decode_args(samples, epoch)
        if self.cfg.num_workers == 0:
            return decode_batch(items, **kwargs)
        if self._pool is None:
            import multiprocessing as mp
            import tempfile

            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._shm_dir = tempfile.mkdtemp(prefix="vla-stream-", dir=shm)
            self._pool = mp.get_context("spawn").Pool(self.cfg.num_workers)
        ring = self._ring_slot()
        task = self._pool.apply_async(decode_batch, (items,), {**kwargs, "ring": ring})
        self._ring_tasks[ring[1]] = (task, self._gen_number)
        return task

    def _ring_slot(self) -> tuple[str, int, int]:
        """(ring path, free slot, slot bytes); creates the ring on first use."""
        if self._ring is None:
            import mmap

            n_cams, res = len(self.cfg.cameras), self.resolution
            item = 4 if self.cfg.augment else 1  # float32 frames with augmentation, uint8 without
            slot_bytes = -(-self.batch_size * n_cams * 3 * res * res * item // 4096) * 4096
            slots = self.cfg.prefetch_batches + 1
            path = os.path.join(self._shm_dir, "ring")
            with open(path, "w+b") as f:
                f.truncate(slots * slot_bytes)
                self._ring = (path, mmap.mmap(f.fileno(), 0), slots, slot_bytes)
        path, _, slots, slot_bytes = self._ring
        slot = self._ring_next % slots
        self._ring_next += 1
        previous = self._ring_tasks.pop(slot, None)
        if previous is not None:  # a batch abandoned by load_state_dict: let its task finish first
            if previous[1] == self._gen_number:
                raise RuntimeError(f"stream bug: ring slot {slot} reused before its batch was consumed")
            previous[0].wait()
        return path, slot, slot_bytes

    def _finish(self, handle: Any, samples: list[dict], epoch: int, next_position: int) -> tuple[dict, int, int]:
        import torch

        from pipeline.model.prompt import collate

        pixels, bad = handle if isinstance(handle, tuple) else handle.get()
        if isinstance(pixels, tuple) and pixels[0] == "ring":
            self._ring_tasks.pop(pixels[1], None)  # consumed: the slot may be rewritten
            pixels = read_ring_slot(self._ring[1], pixels, self._ring[3])
        for i, c in bad:
            self.stats["bad_images"] += 1
            where = self._sources[samples[i]["dataset_index"]].describe(samples[i]["episode"])
            log.warning("[rank %d] image of %s (%s, camera %s) failed to decode; using zeros", self.rank,
                        samples[i]["meta"], where, self.cfg.cameras[c])
        built = []
        for s in samples:
            # pixels are attached below as one tensor: collate's per-sample torch.stack costs ~20 ms
            # per frame on this CPU, while torch.from_numpy on the worker's batch array is free.
            sample = {"language_instruction": s["language_instruction"], "action": s["action"],
                      "pixel_values": _NO_PIXELS, "dataset_index": s["dataset_index"], "meta": s["meta"]}
            built.append(self._builder(sample))
        batch = collate(built, self._pad_id)
        for c, slot in enumerate(self.cfg.cameras):
            key = "pixel_values" if c == 0 else f"pixel_values_{slot}"
            batch[key] = torch.from_numpy(np.ascontiguousarray(pixels[:, c]))
        return batch, epoch, next_position

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.seed, "world_size": self.world_size, "rank": self.rank,
                "batch_size": self.batch_size, "mixture_hash": self.mixture_hash, "plan_hash": self.plan_hash,
                "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s (epoch, global position); world size and batch size may differ."""
        expect = {"version": STATE_VERSION, "seed": self.seed, "mixture_hash": self.mixture_hash,
                  "plan_hash": self.plan_hash}
        why = {"version": "saved by another stream version", "seed": "set stream.seed to the saved seed",
               "mixture_hash": "the mixture weights or the curated data changed",
               "plan_hash": "stream.buffer_bytes changed (it sets the shuffle window)"}
        for key, value in expect.items():
            if state.get(key) != value:
                raise UserError(f"stream state: '{key}' is {state.get(key)!r}, this stream has {value!r} ({why[key]})")
        self._gen = None  # drops prefetched work
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def close(self) -> None:
        """Stop workers and I/O threads (safe to call twice)."""
        self._gen = None
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        self._ring_tasks.clear()
        if self._ring is not None:
            try:
                self._ring[1].close()
            except BufferError:  # a caller still holds a view (never the batches: they are copies)
                pass
            self._ring = None
        if self._shm_dir is not None:
            import shutil

            shutil.rmtree(self._shm_dir, ignore_errors=True)  # batches decoded but never consumed
            self._shm_dir = None
        if not self._closed:
            self._io.shutdown(wait=True, cancel_futures=True)
        self._closed = True

    def __enter__(self) -> TrainingStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: worker processes must not outlive the stream
        try:
            self.close()
        except Exception:
            pass
