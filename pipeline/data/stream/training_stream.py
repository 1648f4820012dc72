"""Training stream: curated datasets + mixture -> rank-disjoint, resumable training batches, forever.

Flow (one rank)::

    epoch plan (plan.py: global order of (dataset, episode, frame) for epoch e)
      -> this rank's positions (lockstep global batches of world_size * batch_size)
      -> episode cache (cache.py: I/O threads read whole episodes by byte range from the
         sources (source.py), ENCODED images only; bounded by ``buffer_bytes``; an episode is
         dropped after this rank's last use of it)
      -> decode/resize/augment (decode_pool.py, frames.py) in ``num_workers`` processes, batch k on any
         worker, results taken back in batch order (output independent of worker count)
      -> BOUNDS_Q99 action normalization (normalize.py) + prompt builder + collate -> batch

EPOCH DEFINITION: see ``pipeline.data.mixture.shares`` and ``pipeline.data.stream.plan`` (one epoch =
E = sum_i N_i draws, N_i = training frames; dataset i gets round(share_i * E) of them, walking seeded
windowed permutations of its frames, wrapping or truncating; share_i ∝ w_i * num_transitions_i of its
statistics, as OpenVLA, when the mixture balances by size). The mixture is parsed once by the caller and handed in. The
window W_i (episodes "live" at once in dataset i's permutation) is derived from ``buffer_bytes``:
W_i = max(1, 1.5 * buffer_bytes * share_i / mean episode bytes of dataset i) (frames are freed as
they are used, so on average half of each live episode is held), so the plan depends on
``buffer_bytes`` and the data, never on world size, rank or worker count.

RANK SHARDING / STATE: position = global samples consumed in the epoch. Global batch at position p
gives rank r the positions [p + r*B, p + (r+1)*B). When fewer than world_size*B positions remain
the epoch ends; that tail (< one global batch) is dropped for the epoch and counted in
``stats["dropped_tail_samples"]``. ``state_dict()`` = {version, seed, world_size, rank, batch_size,
mixture_hash, plan_hash, epoch, position}; restoring at another world size (or batch size)
resumes the same epoch at the same global position, so each planned frame is still used once.

FAILURES: an episode whose bytes are corrupt (a ``CorruptDataError`` of the readers: CRC mismatch,
truncation, a malformed or mis-shaped record) is counted in ``stats["corrupt_episodes"]`` with a
warning naming the shard and record; its samples are replaced by the previous good sample of the
same batch (the next one for the first), counted in ``stats["replaced_samples"]``; a batch with no
readable sample repeats the last good sample of the stream (UserError if there is none yet). An
image whose bytes do not decode becomes zeros (``stats["bad_images"]``, the warning names shard and
record). Any other error while reading or decoding (a bug, a missing file) fails the stream with a
message naming the dataset, episode, shard and record; storage down past its retries raises
``fs.StorageUnavailable``. ``stats`` are per process and not part of the state. A record found
corrupt by the index scan (or listed by the manifest but cut off a truncated shard) is left out of
the plan (0 frames), counted in ``stats["skipped_records"]`` and named in a warning.

DETAILS: the per-shard record index is built as :mod:`pipeline.data.stream.source` describes; the
decode workers and their /dev/shm ring as :mod:`pipeline.data.stream.decode_pool` describes. The ring has
``prefetch_batches + 1`` slots: at most that many batches are in flight.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import fs
from pipeline.config import helpfield
from pipeline.data.io.errors import CorruptDataError
from pipeline.data.manifest import CuratedDataset, content_hash
from pipeline.data.mixture.files import Mixture
from pipeline.data.mixture.shares import epoch_draws
from pipeline.data.schema import CAMERA_SLOTS
from pipeline.data.stream.cache import EpisodeCache, make_keys, split_key
from pipeline.data.stream.decode_pool import DecodePool
from pipeline.data.stream.normalize import normalize_bounds_q99
from pipeline.data.stream.plan import EpochPlan, build_epoch_plan, rank_positions
from pipeline.data.stream.source import CuratedSource, Episode, EpisodeSource
from pipeline.errors import ConfigError, UserError

__all__ = ["StreamConfig", "TrainingStream", "STATE_VERSION"]

log = logging.getLogger("pipeline.stream")
_NO_PIXELS = np.zeros((0,), dtype=np.float32)
STATE_VERSION = 3  # 2: hashes by manifest.content_hash; 3: shares by num_transitions (statistics, split all)


@dataclass(kw_only=True)
class StreamConfig:
    """How the stream reads and decodes (where from, the run's batch size, seed and image size are
    arguments of :class:`TrainingStream`). Checked here: a bad value is a ConfigError."""

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


# ------------------------------------------------------------------------------------------ stream
class TrainingStream:
    """Infinite iterator of training batches for one rank (contracts.md "Training batch").

    Args:
        cfg: :class:`StreamConfig`.
        data_root: curated output root (local dir or gs://), holds ``<dataset>/<CURATED_VERSION>/``.
        batch_size: samples per rank per step (global batch = world_size * batch_size).
        seed: seed of the epoch plans and of the augmentation draws.
        resolution: model image size (square), Lanczos resize.
        rank, world_size: this process's data-parallel rank and the number of ranks.
        prompt_builder: callable sample -> sample adding ``input_ids``/``labels`` (e.g.
            ``pipeline.model.prompt.ActionPromptBuilder``); reads ``language_instruction`` and the
            normalized ``action``.
        pad_id: padding id for ``input_ids`` (default: the builder's ``text_tokenizer.pad_token_id``).
        mixture: the parsed :class:`~pipeline.data.mixture.files.Mixture` (weights, balance_by_size).
        sources: one :class:`EpisodeSource` per weighted dataset of the mixture, in its order
            (default: a :class:`CuratedSource` of each under ``data_root``).
    """

    def __init__(self, cfg: StreamConfig, *, data_root: str, batch_size: int, seed: int, resolution: int, rank: int,
                 world_size: int, prompt_builder: Callable[[dict], dict], mixture: Mixture, pad_id: int | None = None,
                 sources: Sequence[EpisodeSource] | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        if batch_size < 1 or resolution < 8:
            raise ValueError(f"batch_size={batch_size}, resolution={resolution}: need batch_size >= 1, resolution >= 8")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.batch_size, self.seed, self.resolution = batch_size, seed, resolution
        self._builder = prompt_builder
        self._pad_id = pad_id if pad_id is not None else int(prompt_builder.text_tokenizer.pad_token_id)
        names = list(mixture.active())
        if sources is None:
            sources = [CuratedSource(CuratedDataset(data_root, n), split=cfg.split,
                                     index_cache_dir=cfg.index_cache_dir) for n in names]
        self._sources = list(sources)
        self.dataset_names = [s.name for s in self._sources]
        if self.dataset_names != names:
            raise ValueError(f"sources {self.dataset_names} are not the weighted datasets {names} of "
                             f"mixture {mixture.name}")
        draws = epoch_draws(mixture, {s.name: s.layout.num_frames for s in self._sources},
                            {s.name: s.num_transitions for s in self._sources})
        self.shares, self.counts = draws.shares, draws.counts
        empty = [f"{s.name} (num_transitions {s.num_transitions})" for s, c in zip(self._sources, self.counts)
                 if c > 0 and s.layout.num_frames == 0]
        if empty:  # its statistics give it a share, but curation (or damage) left no frame to draw
            raise UserError(f"mixture {mixture.name}: no {cfg.split} frames to draw for {', '.join(empty)}; "
                            f"give it weight 0 or re-curate it")
        self.windows = [self._window(s, share) for s, share in zip(self._sources, self.shares)]
        # every input of the shares and the epoch length: another value draws otherwise, so a state is refused
        self.mixture_hash = content_hash({"names": self.dataset_names, "weights": list(draws.weights),
                                          "frames": list(draws.frames), "transitions": list(draws.transitions),
                                          "balance": bool(mixture.balance_by_size)})[:16]
        self.plan_hash = content_hash({"mixture": self.mixture_hash, "windows": self.windows,
                                       "counts": self.counts.tolist()})[:16]
        if self.epoch_length() < self.global_batch:
            raise UserError(f"mixture {mixture.name}: an epoch has {self.epoch_length()} frames, fewer than one "
                            f"global batch ({world_size} x batch_size={batch_size}); lower batch_size")
        self.epoch, self.position = 0, 0
        self.stats = {"corrupt_episodes": 0, "replaced_samples": 0, "bad_images": 0, "dropped_tail_samples": 0,
                      "peak_cache_bytes": 0,
                      "skipped_records": sum(len(getattr(s, "skipped_records", ())) for s in self._sources)}
        self._plan: EpochPlan | None = None
        self._gen: Iterator | None = None
        self._decoder = DecodePool(workers=cfg.num_workers, slots=cfg.prefetch_batches + 1,
                                   batch_size=batch_size, cameras=len(cfg.cameras), size=(resolution, resolution),
                                   augment=cfg.augment, seed=seed)
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
        ds, ep = split_key(keys)
        out = np.zeros(len(keys), dtype=np.int64)
        for d, src in enumerate(self._sources):
            sel = ds == d
            out[sel] = src.episode_bytes[ep[sel]] // np.maximum(1, src.layout.episode_frames[ep[sel]])
        return out

    def _read(self, key: int) -> Episode | None:
        """The episode, or None when its bytes are corrupt (counted, warned); anything else fails loudly."""
        ds, ep = split_key(key)
        source = self._sources[ds]
        try:
            return source.read_episode(ep, self.cfg.cameras)
        except CorruptDataError as e:  # CRC mismatch, truncation, malformed record: counted and replaced
            self.stats["corrupt_episodes"] += 1
            log.warning("[rank %d] skipping corrupt episode %s: %s", self.rank, source.describe(ep),
                        str(e).splitlines()[0])
            return None
        except fs.StorageUnavailable:  # storage down past the retry budget: fail, never skip silently
            raise
        except Exception as e:  # not a data error (a bug, a missing file): fail, naming the episode
            raise RuntimeError(f"[rank {self.rank}] reading episode {ep} of dataset {source.name} "
                               f"({source.describe(ep)}) failed: {type(e).__name__}: {e}") from e

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> TrainingStream:
        return self

    def __next__(self) -> dict:
        if self._closed:
            raise RuntimeError("TrainingStream is closed")
        if self._gen is None:
            self._decoder.restart()  # batches in flight so far are never consumed
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
        pos = rank_positions(position, steps, world_size=self.world_size, rank=self.rank, batch_size=b).reshape(-1)
        ds, fr = plan.dataset[pos], plan.frame[pos]
        cache = EpisodeCache(make_keys(ds, plan.pass_index[pos], plan.episode[pos]), fr, budget=self.cfg.buffer_bytes,
                             cameras=self.cfg.cameras, frame_bytes=self._frame_bytes, read=self._read,
                             executor=self._io, stats=self.stats)
        pending: deque = deque()
        for k in range(steps):
            sl = slice(k * b, (k + 1) * b)
            cache.pump(need_upto=(k + 1) * b)
            samples = self._gather(cache, cache.sample_slot[sl], ds[sl], fr[sl], pos[sl])
            items = [(s["position"], s["images"]) for s in samples]
            pending.append((self._decoder.submit(items, epoch), samples, epoch, position + (k + 1) * g))
            if len(pending) > self.cfg.prefetch_batches:
                yield self._finish(*pending.popleft())
        while pending:
            yield self._finish(*pending.popleft())

    def _gather(self, cache: EpisodeCache, slots, ds, fr, pos) -> list[dict]:
        samples: list[dict | None] = []
        for slot, d, f, p in zip(slots.tolist(), ds.tolist(), fr.tolist(), pos.tolist()):
            episode, images = cache.take(slot, f)
            key = int(cache.keys[slot])
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
                "episode": split_key(key)[1],  # dataset-local index, for messages (describe)
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

    def _finish(self, handle: Any, samples: list[dict], epoch: int, next_position: int) -> tuple[dict, int, int]:
        import torch

        from pipeline.model.prompt import collate

        pixels, bad = self._decoder.result(handle)
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

    def worker_pids(self) -> list[int]:
        """Process ids of the decode workers (for CPU and memory accounting, e.g. bench-stream)."""
        return self._decoder.worker_pids()

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
               "mixture_hash": "the mixture weights or the curated data (frames, statistics) changed",
               "plan_hash": "stream.buffer_bytes changed (it sets the shuffle window)"}
        for key, value in expect.items():
            if state.get(key) != value:
                raise UserError(f"stream state: '{key}' is {state.get(key)!r}, this stream has {value!r} ({why[key]})")
        self._gen = None  # drops prefetched work
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def close(self) -> None:
        """Stop workers and I/O threads (safe to call twice)."""
        self._gen = None
        self._decoder.close()
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
