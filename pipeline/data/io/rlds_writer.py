"""Write RLDS episodes as TFRecord shards and the TFDS metadata that makes them a builder directory.

API (stable; other modules code against it)::

    encode_episode(ep: dict, features) -> bytes          # one tf.train.Example, tfds layout
    WrittenShard(num_episodes, num_frames, sha256)       # NamedTuple
    EpisodeWriter(shard_url, features)                   # context manager: .write(ep), .close() -> WrittenShard
    write_shard(shard_url, episodes, features) -> WrittenShard   # atomic (temp + rename / one upload)
    write_builder_metadata(dir_url, name, version, features_tree, split_shards, *, description="",
                           homepage=None, citation=None, num_bytes=None) -> None
        split_shards: {split: [episodes in shard 0, shard 1, ...]}; writes dataset_info.json +
        features.json with tfds itself so ``tfds.builder_from_directory(dir)`` reads our shards.

Episodes follow the raw-episode layout: step values have a leading T axis; images / text are bytes
(str is UTF-8 encoded); zlib/bytes-encoded tensors are bytes, or a numeric array that the writer
encodes as tfds does; keys not in ``features`` (e.g. ``_source``) are ignored. Values are checked
against the declared shapes (ValueError naming the key). Per-step tensors with unknown dimensions
(tfds' ragged encoding) are not supported (UserError). Shards are named by
:func:`pipeline.data.io.builder.shard_filename`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
import zlib
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from pipeline import fs
from pipeline.data.io.builder import SHARD_TEMPLATE, VERSION_RE, shard_filename
from pipeline.data.io.example import encode_example
from pipeline.data.io.features import FeaturePlan, FeatureSpec, feature_plans, to_tfds_features
from pipeline.data.io.tfrecord import frame_record
from pipeline.errors import UserError

__all__ = ["encode_episode", "WrittenShard", "EpisodeWriter", "write_shard", "write_builder_metadata"]


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


def _encode_value(plan: FeaturePlan, value: Any, T: int | None) -> Any:
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


def _steps_of(plan: FeaturePlan, value: Any) -> int:
    if plan.spec.is_bytes and isinstance(value, (bytes, str)):
        return 1
    return len(value)


def encode_episode(ep: dict, features: Any) -> bytes:
    """Serialize one episode as the ``tf.train.Example`` tfds would write for ``features``."""
    return _encode_with_plans(ep, feature_plans(features, ()))[0]


def _encode_with_plans(ep: dict, plans: list[FeaturePlan]) -> tuple[bytes, int]:
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
        self._plans = feature_plans(features, ())
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

    if not VERSION_RE.match(str(version)):
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
                data_dir=tfds.core.Path(tmp), template=SHARD_TEMPLATE, dataset_name=name, split=split,
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
