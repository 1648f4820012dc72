"""``tf.train.Example`` coding without TensorFlow.

API (stable; other modules code against it)::

    # tf.train.Example message classes built at runtime (no tensorflow import):
    Example, Features, Feature, BytesList, FloatList, Int64List
    encode_example(features: Mapping[str, value]) -> bytes
        value: np.ndarray of float dtype -> float_list (stored as float32);
               integer / bool ndarray, int, bool -> int64_list;
               bytes / str / list|tuple|object-ndarray of bytes|str -> bytes_list
    decode_example(data: bytes, skip: Container[str] = ()) -> dict[str, np.ndarray | list[bytes]]
        float_list -> float32 1-D array, int64_list -> int64 1-D array, bytes_list -> list[bytes];
        malformed bytes -> MalformedExampleError (pipeline.data.io.errors)

``decode_example`` is a hand-written wire-format parser: packed float lists become
``np.frombuffer`` views and packed varints are decoded with numpy, so the hot path has no per-value
Python work. ``encode_example`` writes the same bytes the protobuf classes would.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pipeline.data.io.errors import MalformedExampleError

__all__ = [
    "Example",
    "Features",
    "Feature",
    "BytesList",
    "FloatList",
    "Int64List",
    "encode_example",
    "decode_example",
]


# --------------------------------------------------------------------------------------------------
# tf.train.Example protos, built from a descriptor (field numbers of tensorflow/core/example/*.proto)
# --------------------------------------------------------------------------------------------------

def _build_example_classes() -> dict[str, Any]:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="pipeline_tf_example.proto", package="tensorflow", syntax="proto3"
    )

    def msg(name: str, fields: list[tuple[str, int, int, int, str | None]], oneof: str | None = None):
        m = fdp.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = type_name
            if oneof:
                fd.oneof_index = 0
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    msg("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])  # proto3: packed by default
    msg("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    msg("Feature", [
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List"),
    ], oneof="kind")
    feats = msg("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry")])
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    msg("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features")])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    names = ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}")) for n in names}


_CLASSES = _build_example_classes()
Example = _CLASSES["Example"]
Features = _CLASSES["Features"]
Feature = _CLASSES["Feature"]
BytesList = _CLASSES["BytesList"]
FloatList = _CLASSES["FloatList"]
Int64List = _CLASSES["Int64List"]


# --------------------------------------------------------------------------------------------------
# Fast wire-format codec for Example
# --------------------------------------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return result, pos
        shift += 7


def _decode_varints(payload: bytes) -> np.ndarray:
    """Decode packed (possibly negative, two's complement) varints into int64 with numpy."""
    b = np.frombuffer(payload, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, np.int64)
    if b.max() < 0x80:
        return b.astype(np.int64)
    ends = b < 0x80
    if not ends[-1]:
        raise ValueError("truncated varint")
    group = np.concatenate(([0], np.cumsum(ends)[:-1]))  # value index of each byte
    starts = np.flatnonzero(np.concatenate(([True], ends[:-1])))
    pos_in_group = np.arange(b.size) - starts[group]
    parts = (b & 0x7F).astype(np.uint64) << (7 * pos_in_group).astype(np.uint64)
    return np.add.reduceat(parts, starts).view(np.int64)


def _skip_field(buf: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        n, pos = _varint(buf, pos)
        return pos + n
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


def _decode_list(kind: int, buf: bytes, start: int, end: int) -> np.ndarray | list[bytes]:
    """Decode a BytesList (1) / FloatList (2) / Int64List (3) occupying buf[start:end]."""
    pos = start
    if kind == 1:
        out: list[bytes] = []
        while pos < end:
            tag, pos = _varint(buf, pos)
            if tag == 0x0A:
                n, pos = _varint(buf, pos)
                out.append(buf[pos:pos + n])
                pos += n
            else:
                pos = _skip_field(buf, pos, tag & 7)
        return out
    chunks: list[np.ndarray] = []
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field != 1:
            pos = _skip_field(buf, pos, wire)
        elif wire == 2:  # packed
            n, pos = _varint(buf, pos)
            if kind == 2:
                chunks.append(np.frombuffer(buf, dtype="<f4", count=n // 4, offset=pos))
            else:
                chunks.append(_decode_varints(buf[pos:pos + n]))
            pos += n
        elif kind == 2 and wire == 5:
            chunks.append(np.frombuffer(buf, dtype="<f4", count=1, offset=pos))
            pos += 4
        elif kind == 3 and wire == 0:
            v, pos = _varint(buf, pos)
            chunks.append(np.array([v], dtype=np.uint64).view(np.int64))
        else:
            raise ValueError(f"bad wire type {wire} in list")
    dtype = np.float32 if kind == 2 else np.int64
    if not chunks:
        return np.zeros(0, dtype)
    # astype copies: results are writeable and do not keep the record buffer alive
    return (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)).astype(dtype)


def _decode_feature(buf: bytes, start: int, end: int) -> np.ndarray | list[bytes]:
    pos = start
    value: np.ndarray | list[bytes] = []
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2 and field in (1, 2, 3):
            n, pos = _varint(buf, pos)
            value = _decode_list(field, buf, pos, pos + n)
            pos += n
        else:
            pos = _skip_field(buf, pos, wire)
    return value


def decode_example(data: bytes, skip: Container[str] = ()) -> dict[str, np.ndarray | list[bytes]]:
    """Parse serialized ``tf.train.Example`` bytes into ``{key: values}`` (see module docstring).

    Keys in ``skip`` are not materialized (absent from the result). A feature with no kind set
    decodes to ``[]``. Malformed bytes raise :class:`~pipeline.data.io.errors.MalformedExampleError`
    (a ValueError and a CorruptDataError).
    """
    buf = bytes(data)
    out: dict[str, np.ndarray | list[bytes]] = {}
    try:
        pos, end = 0, len(buf)
        while pos < end:
            tag, pos = _varint(buf, pos)
            if tag != 0x0A:  # Example.features
                pos = _skip_field(buf, pos, tag & 7)
                continue
            n, pos = _varint(buf, pos)
            fend = pos + n
            while pos < fend:  # Features.feature map entries
                tag, pos = _varint(buf, pos)
                if tag != 0x0A:
                    pos = _skip_field(buf, pos, tag & 7)
                    continue
                n, pos = _varint(buf, pos)
                eend = pos + n
                key, value = "", []
                while pos < eend:
                    tag, pos = _varint(buf, pos)
                    if tag == 0x0A:
                        n, pos = _varint(buf, pos)
                        key = buf[pos:pos + n].decode("utf-8")
                        pos += n
                    elif tag == 0x12:
                        n, pos = _varint(buf, pos)
                        if key not in skip:
                            value = _decode_feature(buf, pos, pos + n)
                        pos += n
                    else:
                        pos = _skip_field(buf, pos, tag & 7)
                if key not in skip:
                    out[key] = value
        if pos != end:
            raise ValueError("trailing bytes")
    except (IndexError, ValueError) as e:  # out-of-range reads, bad varints/wire types, bad UTF-8 keys
        raise MalformedExampleError(f"malformed tf.train.Example: {e}") from e
    return out


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    if v < 0x80:
        return bytes((v,))
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _enc_len(field_tag: int, payload: bytes) -> bytes:
    return bytes((field_tag,)) + _enc_varint(len(payload)) + payload


def _encode_int64s(arr: np.ndarray) -> bytes:
    if arr.size and arr.min() >= 0 and arr.max() < 0x80:
        return arr.astype(np.uint8).tobytes()
    return b"".join(_enc_varint(int(v)) for v in arr.tolist())


def _encode_feature(key: str, value: Any) -> bytes:
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, (bool, int, float, np.generic)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and value.dtype != object and value.dtype.kind not in "SU":
        arr = value.ravel()
        if arr.dtype.kind == "f":
            lst = _enc_len(0x0A, arr.astype("<f4").tobytes()) if arr.size else b""
            feature = _enc_len(0x12, lst)
        elif arr.dtype.kind in "iub":
            lst = _enc_len(0x0A, _encode_int64s(arr.astype(np.int64))) if arr.size else b""
            feature = _enc_len(0x1A, lst)
        else:
            raise ValueError(f"feature '{key}': unsupported dtype {arr.dtype}")
    else:
        items = np.asarray(value, dtype=object).ravel().tolist() if isinstance(value, np.ndarray) else value
        parts = []
        for item in items:
            if isinstance(item, str):
                item = item.encode("utf-8")
            elif not isinstance(item, (bytes, bytearray, memoryview)):
                raise ValueError(f"feature '{key}': expected bytes or str, got {type(item).__name__}")
            parts.append(_enc_len(0x0A, bytes(item)))
        feature = _enc_len(0x0A, b"".join(parts))
    entry = _enc_len(0x0A, key.encode("utf-8")) + _enc_len(0x12, feature)
    return _enc_len(0x0A, entry)


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize ``{key: value}`` as ``tf.train.Example`` bytes (keys in sorted order, deterministic)."""
    body = b"".join(_encode_feature(k, features[k]) for k in sorted(features))
    return _enc_len(0x0A, body)
