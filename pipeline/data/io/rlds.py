"""RLDS/TFDS builder directories: open, read episodes, write shards and metadata (no TF to read).

API (stable; other modules code against it)::

    ShardInfo(url: str, num_episodes: int)
    BuilderInfo(name, version, url, features: spec tree, splits: dict[str, list[ShardInfo]],
                description: str)                       # .num_episodes(split) -> int
    open_builder(url: str) -> BuilderInfo
        url = <root>/<name>/<version>, or <root>/<name> (highest version dir is picked).
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
    shard_filename(name, split, index, num_shards) -> "<name>-<split>.tfrecord-00000-of-0000N"
    encode_episode(ep: dict, features) -> bytes          # one tf.train.Example, tfds layout
    WrittenShard(num_episodes, num_frames, sha256)       # NamedTuple
    EpisodeWriter(shard_url, features)                   # context manager: .write(ep), .close() -> WrittenShard
    write_shard(shard_url, episodes, features) -> WrittenShard   # atomic (temp + rename / one upload)
    write_builder_metadata(dir_url, name, version, features_tree, split_shards, *, description="",
                           homepage=None, citation=None, num_bytes=None) -> None
        split_shards: {split: [episodes in shard 0, shard 1, ...]}; writes dataset_info.json +
        features.json with tfds itself so ``tfds.builder_from_directory(dir)`` reads our shards.

Episodes passed to the writer follow the raw-episode layout: step values have a leading T axis;
images / text are bytes (str is UTF-8 encoded); zlib/bytes-encoded tensors are bytes, or a numeric
array that the writer encodes as tfds does; keys not in ``features`` (e.g. ``_source``) are ignored.
Values are checked against the declared shapes (ValueError naming the key). Per-step tensors with
unknown dimensions (tfds' ragged encoding) are not supported (UserError).
Reader output arrays are writeable copies (they do not pin the record buffer).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import os
import queue
import re
import tempfile
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from pipeline import fs
from pipeline.data.io.features import (
    FeatureSpec,
    as_spec_tree,
    flatten_spec,
    parse_features_json,
    to_tfds_features,
)
from pipeline.data.io.tfrecord import (
    CorruptRecordError,
    decode_example,
    encode_example,
    frame_record,
    read_indexed_records,
)
from pipeline.errors import UserError

__all__ = [
    "ShardInfo",
    "BuilderInfo",
    "open_builder",
    "ReadStats",
    "read_episodes",
    "iter_dataset",
    "shard_filename",
    "encode_episode",
    "WrittenShard",
    "EpisodeWriter",
    "write_shard",
    "write_builder_metadata",
]

log = logging.getLogger("pipeline.data.io.rlds")

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


# -------------------------------------------------------------------------------------------- open

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
    versions = [fs.basename(c) for c in fs.listdir(url) if _VERSION_RE.match(fs.basename(c))]
    versions = [v for v in versions if fs.exists(fs.join(url, v, "dataset_info.json"))]
    if not versions:
        raise UserError(f"dataset directory {url} has no <version>/dataset_info.json; expected e.g. {url}/1.0.0")
    return fs.join(url, max(versions, key=_version_key))


def _shard_urls(dir_url: str, name: str, split: str, n: int, template: str, file_format: str) -> list[str]:
    out = []
    for i in range(n):
        fname = (template.replace("{DATASET}", name).replace("{SPLIT}", split)
                 .replace("{FILEFORMAT}", file_format)
                 .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
                 .replace("{SHARD_INDEX}", f"{i:05d}").replace("{NUM_SHARDS}", f"{n:05d}"))
        out.append(fs.join(dir_url, fname))
    return out


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
        template = split.get("filepathTemplate") or _DEFAULT_TEMPLATE
        urls = _shard_urls(vdir, name, split["name"], len(lengths), template, file_format)
        splits[split["name"]] = [ShardInfo(u, n) for u, n in zip(urls, lengths)]
    return BuilderInfo(name=name, version=str(info.get("version", fs.basename(vdir))), url=vdir,
                       features=features, splits=splits, description=info.get("description", ""))


# -------------------------------------------------------------------------------------------- read

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


class _Plan(NamedTuple):
    key: str                 # flat key, e.g. "steps/observation/image"
    parts: tuple[str, ...]   # nested output path
    spec: FeatureSpec
    in_sequence: bool
    numel: int               # stored values per step (or per episode value); -1 if a dim is unknown


def _numel(spec: FeatureSpec) -> int:
    """Number of stored list values per step: 1 for an image/text/encoded tensor, else prod(shape)."""
    if spec.kind in ("image", "text") or spec.encoding != "none":
        return 1
    return -1 if any(d is None for d in spec.shape) else math.prod(spec.shape)


def _make_plan(features: Any, skip_keys: Iterable[str]) -> list[_Plan]:
    skips = tuple(k.strip("/") for k in skip_keys)
    plans = []
    for key, flat in flatten_spec(as_spec_tree(features)).items():
        if any(key == s or key.startswith(s + "/") for s in skips):
            continue
        parts = flat.path
        if flat.in_sequence and _numel(flat.spec) < 0:
            raise UserError(f"feature '{key}': per-step tensors with unknown dimensions {flat.spec.shape} "
                            "(tfds ragged encoding) are not supported; give the full shape")
        plans.append(_Plan(key, parts, flat.spec, flat.in_sequence, _numel(flat.spec)))
    return plans


def _bytes_array(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _shape_error(plan: _Plan, n: int, T: int, where: str) -> UserError:
    per_step = f" per step for {T} steps" if plan.in_sequence else ""
    return UserError(f"{where}: feature '{plan.key}' has {n} values, which does not fit shape {plan.spec.shape}{per_step}")


def _kind_error(plan: _Plan, got: str, want: str, where: str) -> UserError:
    return UserError(f"{where}: feature '{plan.key}' is stored as {got} but the features spec "
                     f"({plan.spec.kind} {plan.spec.dtype}) expects {want}; check features.json")


def _convert(plan: _Plan, values: Any, T: int, where: str) -> Any:
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


def _num_steps(plans: list[_Plan], ex: dict, where: str) -> int:
    for plan in plans:
        if plan.in_sequence and plan.key in ex and plan.numel > 0:
            n = len(ex[plan.key])
            if n % plan.numel:
                raise UserError(f"{where}: feature '{plan.key}' has {n} values, not a multiple of {plan.numel} per step")
            return n // plan.numel
    return 0


def _decode_episode(plans: list[_Plan], ex: dict, where: str, dataset: str) -> dict:
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
    plans = _make_plan(features, skip_keys)
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

    def produce(shard: ShardInfo, q: queue.Queue) -> None:
        try:
            for ep in read_episodes(shard.url, info.features, skip_keys=skip_keys, on_corrupt=on_corrupt,
                                    dataset=info.name, stats=stats):
                while not stop.is_set():
                    try:
                        q.put(ep, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: Any = _DONE
        except BaseException as e:  # handed to the consumer
            item = e
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

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


# ------------------------------------------------------------------------------------------- write

def shard_filename(name: str, split: str, index: int, num_shards: int) -> str:
    return f"{name}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def _get_path(ep: dict, parts: tuple[str, ...], key: str) -> Any:
    node: Any = ep
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            raise UserError(f"episode is missing feature '{key}' declared in the features spec")
        node = node[p]
    return node


def _encode_tensor_bytes(spec: FeatureSpec, value: np.ndarray) -> bytes:
    raw = np.ascontiguousarray(value, dtype=np.dtype(spec.dtype).newbyteorder("<")).tobytes()
    return zlib.compress(raw) if spec.encoding == "zlib" else raw


def _encode_value(plan: _Plan, value: Any, T: int | None) -> Any:
    spec = plan.spec
    if spec.is_bytes:
        if isinstance(value, (bytes, str)):
            return [value]
        if spec.encoding != "none" and isinstance(value, np.ndarray) and value.dtype != object:
            # a decoded tensor: encode it the way tfds does (per step inside steps)
            return [_encode_tensor_bytes(spec, v) for v in value] if plan.in_sequence else [
                _encode_tensor_bytes(spec, value)]
        return np.asarray(value, dtype=object).ravel().tolist()
    arr = np.asarray(value)
    expected = plan.numel * (T if plan.in_sequence else 1)
    if plan.numel >= 0 and arr.size != expected:
        where = f"{T} steps of shape {spec.shape}" if plan.in_sequence else f"shape {spec.shape}"
        raise ValueError(f"episode feature '{plan.key}' has {arr.size} values; expected {where}")
    if np.dtype(spec.dtype).kind == "f":
        return arr.astype(np.float32, copy=False).ravel()
    return arr.astype(np.int64, copy=False).ravel()


def _steps_of(plan: _Plan, value: Any) -> int:
    if plan.spec.is_bytes and isinstance(value, (bytes, str)):
        return 1
    return len(value)


def encode_episode(ep: dict, features: Any) -> bytes:
    """Serialize one episode as the ``tf.train.Example`` tfds would write for ``features``."""
    return _encode_with_plans(ep, _make_plan(features, ()))[0]


def _encode_with_plans(ep: dict, plans: list[_Plan]) -> tuple[bytes, int]:
    out: dict[str, Any] = {}
    T: int | None = None
    for plan in plans:
        value = _get_path(ep, plan.parts, plan.key)
        if plan.in_sequence:
            n = _steps_of(plan, value)
            if T is None:
                T = n
            elif n != T:
                raise ValueError(f"episode step feature '{plan.key}' has {n} steps, expected {T}")
        out[plan.key] = _encode_value(plan, value, T)
    return encode_example(out), T or 0


class WrittenShard(NamedTuple):
    num_episodes: int
    num_frames: int
    sha256: str


class EpisodeWriter:
    """Write episodes to one TFRecord shard, published atomically on ``close()``.

    Local: written to ``<shard>.tmp-<random>`` then renamed. gs://: written to a local temp file, then
    uploaded in one finalized upload. Leaving the ``with`` block on an exception publishes nothing.
    """

    def __init__(self, shard_url: str, features: Any) -> None:
        self.url = str(shard_url)
        self._plans = _make_plan(features, ())
        self._remote = fs.is_remote(self.url)
        if self._remote:
            fd, self._tmp = tempfile.mkstemp(prefix="shard-", suffix=".tfrecord")
            os.close(fd)
        else:
            path = fs.get_fs(self.url)[1]
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        self._file = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self.num_episodes = 0
        self.num_frames = 0
        self._result: WrittenShard | None = None

    def write(self, ep: dict) -> None:
        data, T = _encode_with_plans(ep, self._plans)
        framed = frame_record(data)
        self._file.write(framed)
        self._sha.update(framed)
        self.num_episodes += 1
        self.num_frames += T

    def close(self) -> WrittenShard:
        if self._result is not None:
            return self._result
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            if self._remote:
                fsys, path = fs.get_fs(self.url)
                fsys.put_file(self._tmp, path)
            else:
                os.replace(self._tmp, fs.get_fs(self.url)[1])
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)
        self._result = WrittenShard(self.num_episodes, self.num_frames, self._sha.hexdigest())
        return self._result

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(shard_url: str, episodes: Iterable[dict], features: Any) -> WrittenShard:
    """Write ``episodes`` to ``shard_url`` atomically; return (num_episodes, num_frames, sha256)."""
    with EpisodeWriter(shard_url, features) as w:
        for ep in episodes:
            w.write(ep)
    return w.close()


def _shard_bytes(dir_url: str, name: str, split: str, num_shards: int) -> int:
    total = 0
    for i in range(num_shards):
        fsys, path = fs.get_fs(fs.join(dir_url, shard_filename(name, split, i, num_shards)))
        try:
            total += int(fsys.size(path))
        except FileNotFoundError:
            pass
    return total


def write_builder_metadata(
    dir_url: str,
    name: str,
    version: str,
    features_tree: Any,
    split_shards: dict[str, list[int]],
    *,
    description: str = "",
    homepage: str | None = None,
    citation: str | None = None,
    num_bytes: dict[str, int] | None = None,
) -> None:
    """Write ``dataset_info.json`` and ``features.json`` into ``dir_url`` exactly as tfds does.

    ``split_shards`` = {split: [episodes per shard]} for shards named by ``shard_filename``.
    ``num_bytes`` = {split: total shard bytes} (default: summed from the shard files found in
    ``dir_url``).
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import dataset_info, naming, splits

    if not _VERSION_RE.match(str(version)):
        raise UserError(f"version {version!r}: expected MAJOR.MINOR.PATCH, e.g. 1.0.0")
    features = to_tfds_features(features_tree)
    with tempfile.TemporaryDirectory(prefix="tfds-meta-") as tmp:
        identity = dataset_info.DatasetIdentity(
            name=name, version=tfds.core.Version(str(version)), data_dir=tmp, module_name=""
        )
        info = dataset_info.DatasetInfo(builder=identity, description=description, features=features,
                                        homepage=homepage, citation=citation)
        info.set_file_format("tfrecord")
        split_infos = []
        for split, lengths in split_shards.items():
            n_bytes = (num_bytes or {}).get(split)
            if n_bytes is None:
                n_bytes = _shard_bytes(dir_url, name, split, len(lengths))
            template = naming.ShardedFileTemplate(
                data_dir=tfds.core.Path(tmp), template=_DEFAULT_TEMPLATE, dataset_name=name, split=split,
                filetype_suffix="tfrecord",
            )
            split_infos.append(splits.SplitInfo(
                name=split, shard_lengths=[int(n) for n in lengths],
                num_bytes=int(n_bytes), filename_template=template,
            ))
        info.set_splits(splits.SplitDict(split_infos))
        info.write_to_directory(tmp)
        for fname in sorted(os.listdir(tmp)):
            if fname.endswith(".json"):
                with open(os.path.join(tmp, fname), "rb") as f:
                    fs.write_bytes(fs.join(dir_url, fname), f.read())
