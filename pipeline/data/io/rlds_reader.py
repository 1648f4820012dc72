"""Read RLDS episodes from TFRecord shards of a TFDS builder directory (no TensorFlow).

API (stable; other modules code against it)::

    ReadStats()                                          # .episodes, .corrupt, .errors (messages)
    read_episodes(shard_url, features, *, skip_keys=(), on_corrupt="raise", dataset=None,
                  stats=None) -> Iterator[dict]          # "Raw episode" contract (contracts.md)
        features: spec tree or type-string tree; skip_keys: flat paths or prefixes
        ("steps/observation/image_wrist", "episode_metadata") left out of the output;
        on_corrupt="skip": corrupt records (and records missing a declared feature or not matching
        its shape) are counted in ``stats`` (``.records``: file, index, kind) and logged; reading goes on.
    iter_dataset(url, split="train", *, num_workers=4, shard_indices=None, skip_keys=(),
                 on_corrupt="raise", prefetch=8, stats=None) -> Iterator[dict]
        shards read in parallel threads; output order = shard order, then record order.

Output arrays are writeable copies (they do not pin the record buffer). The directory layout and
``open_builder`` are in :mod:`pipeline.data.io.builder`; writing is :mod:`pipeline.data.io.rlds_writer`.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import fs
from pipeline.data.io.builder import ShardInfo, open_builder
from pipeline.data.io.errors import CorruptRecordError
from pipeline.data.io.example import decode_example
from pipeline.data.io.features import FeaturePlan, as_spec_tree, feature_plans, flatten_spec
from pipeline.data.io.tfrecord import read_indexed_records
from pipeline.errors import UserError

__all__ = ["ReadStats", "read_episodes", "iter_dataset"]

log = logging.getLogger("pipeline.data.io")


@dataclass
class ReadStats:
    """Counters filled by ``read_episodes`` / ``iter_dataset`` (thread-safe increments)."""

    episodes: int = 0
    corrupt: int = 0
    errors: list[str] = field(default_factory=list)
    # one {"file", "index", "kind", "message"} per skipped record; kind: corrupt_record (CRC,
    # truncation, not an Example) | missing_feature | invalid_record (does not match the features)
    records: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # not a dataclass field: asdict()/copy stay plain

    def add_corrupt(self, message: str, *, file: str = "", index: int = -1, kind: str = "corrupt_record") -> None:
        with self._lock:
            self.corrupt += 1
            self.errors.append(message)
            self.records.append({"file": file, "index": int(index), "kind": kind, "message": message})

    def add_episode(self) -> None:
        with self._lock:
            self.episodes += 1


def _bytes_array(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _shape_error(plan: FeaturePlan, n: int, T: int, where: str) -> UserError:
    per_step = f" per step for {T} steps" if plan.in_sequence else ""
    return UserError(f"{where}: feature '{plan.key}' has {n} values, which does not fit shape {plan.spec.shape}{per_step}")


def _kind_error(plan: FeaturePlan, got: str, want: str, where: str) -> UserError:
    return UserError(f"{where}: feature '{plan.key}' is stored as {got} but the features spec "
                     f"({plan.spec.kind} {plan.spec.dtype}) expects {want}; check features.json")


def _convert(plan: FeaturePlan, values: Any, T: int, where: str) -> Any:
    spec = plan.spec
    if spec.is_bytes:
        if isinstance(values, np.ndarray):
            if values.size:
                raise _kind_error(plan, "numbers", "bytes", where)
            values = []
        arr = _bytes_array(values)
        if spec.kind != "tensor" or spec.encoding != "none" or spec.shape == ():
            # one bytes value per step / per episode
            if plan.in_sequence:
                if arr.size != T:
                    raise _shape_error(plan, arr.size, T, where)
                return arr
            if arr.size != 1:
                raise _shape_error(plan, arr.size, T, where)
            return arr[0]
        shape = tuple(-1 if d is None else d for d in spec.shape)
        try:
            return arr.reshape((T, *shape) if plan.in_sequence else shape)
        except ValueError:
            raise _shape_error(plan, arr.size, T, where) from None
    if isinstance(values, list):
        if values:
            raise _kind_error(plan, "bytes", "numbers", where)
        values = np.zeros(0, np.float32)  # empty feature with no kind set
    arr = values.astype(spec.dtype, copy=False)
    shape = tuple(-1 if d is None else d for d in spec.shape)
    try:
        if plan.in_sequence:
            return arr.reshape((T, *shape))
        out = arr.reshape(shape)
    except ValueError:
        raise _shape_error(plan, arr.size, T, where) from None
    return out[()] if out.ndim == 0 else out


def _num_steps(plans: list[FeaturePlan], ex: dict, where: str) -> int:
    for plan in plans:
        if plan.in_sequence and plan.key in ex and plan.numel > 0:
            n = len(ex[plan.key])
            if n % plan.numel:
                raise UserError(f"{where}: feature '{plan.key}' has {n} values, not a multiple of {plan.numel} per step")
            return n // plan.numel
    return 0


def _decode_episode(plans: list[FeaturePlan], ex: dict, where: str, dataset: str) -> dict:
    T = _num_steps(plans, ex, where)
    episode: dict[str, Any] = {}
    for plan in plans:
        values = ex.get(plan.key)
        if values is None:
            raise UserError(
                f"dataset {dataset}: feature '{plan.key}' is declared in features but missing from {where}; "
                "fix the features spec or pass it in skip_keys"
            )
        node = episode
        for p in plan.parts[:-1]:
            node = node.setdefault(p, {})
        node[plan.parts[-1]] = _convert(plan, values, T, where)
    if any(p.in_sequence for p in plans) and "steps" not in episode:
        episode["steps"] = {}
    return episode


def _dataset_from_url(url: str) -> str:
    base = fs.basename(url)
    m = re.match(r"^(.*)-[^-]+\.tfrecord", base)
    return m.group(1) if m else base


def read_episodes(
    shard_url: str,
    features: Any,
    *,
    skip_keys: Iterable[str] = (),
    on_corrupt: str = "raise",
    dataset: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """Yield raw episodes (contracts.md "Raw episode") from one TFRecord shard of a TFDS dataset."""
    if on_corrupt not in ("raise", "skip"):
        raise ValueError(f"on_corrupt={on_corrupt!r}: expected 'raise' or 'skip'")
    plans = feature_plans(features, skip_keys)
    dataset = dataset or _dataset_from_url(shard_url)
    skipped = {k for k in flatten_spec(as_spec_tree(features))} - {p.key for p in plans}
    stats = stats if stats is not None else ReadStats()

    def on_error(err: CorruptRecordError, kind: str = "corrupt_record") -> None:
        stats.add_corrupt(str(err), file=err.file, index=err.index, kind=kind)
        log.warning("skipping corrupt record: %s", err)

    for index, data in read_indexed_records(shard_url, on_error=on_error if on_corrupt == "skip" else None):
        where = f"{shard_url} record {index}"
        try:
            ex = decode_example(data, skip=skipped)
        except ValueError as e:
            err = CorruptRecordError(shard_url, index, f"not a tf.train.Example: {e}")
            if on_corrupt == "raise":
                raise err from e
            on_error(err)
            continue
        try:
            episode = _decode_episode(plans, ex, where, dataset)
        except (UserError, ValueError) as e:  # a record that does not match the features spec
            if on_corrupt == "raise":
                raise
            kind = "missing_feature" if "missing from" in str(e) else "invalid_record"
            on_error(CorruptRecordError(shard_url, index, str(e).replace(f"{where}", "this record")), kind)
            continue
        episode["_source"] = {"file": shard_url, "index": index}
        stats.add_episode()
        yield episode


_DONE = object()


def iter_dataset(
    url: str,
    split: str = "train",
    *,
    num_workers: int = 4,
    shard_indices: Iterable[int] | None = None,
    skip_keys: Iterable[str] = (),
    on_corrupt: str = "raise",
    prefetch: int = 8,
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """Yield the raw episodes of ``split``, reading up to ``num_workers`` shards ahead in threads.

    Order is deterministic: shards in index order (or ``shard_indices`` order), records in file order.
    Each reader thread buffers at most ``prefetch`` episodes.
    """
    info = open_builder(url)
    if split not in info.splits:
        raise UserError(f"{info.url}: split '{split}' not found; available: {', '.join(sorted(info.splits))}")
    shards = info.splits[split]
    indices = list(range(len(shards))) if shard_indices is None else list(shard_indices)
    for i in indices:
        if not 0 <= i < len(shards):
            raise UserError(f"shard_indices: {i} out of range for {len(shards)} shards of {info.name}/{split}")
    skip_keys = tuple(skip_keys)
    stop = threading.Event()

    def put(q: queue.Queue, item: Any) -> bool:
        """Hand ``item`` to the consumer, waiting while its queue is full; False once it has stopped."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        return not stop.is_set()

    def produce(shard: ShardInfo, q: queue.Queue) -> None:
        try:
            for ep in read_episodes(shard.url, info.features, skip_keys=skip_keys, on_corrupt=on_corrupt,
                                    dataset=info.name, stats=stats):
                if not put(q, ep):
                    return
            item: Any = _DONE
        except BaseException as e:  # handed to the consumer
            item = e
        put(q, item)

    workers = max(1, int(num_workers))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlds-read")
    pending: list[queue.Queue] = []
    try:
        it = iter(indices)
        for i in it:
            q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
            pool.submit(produce, shards[i], q)
            pending.append(q)
            if len(pending) >= workers:
                break
        while pending:
            q = pending.pop(0)
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            nxt = next(it, None)
            if nxt is not None:
                nq: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
                pool.submit(produce, shards[nxt], nq)
                pending.append(nq)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
