"""Feature specs of RLDS/TFDS datasets: ``features.json``, type strings, and tfds FeaturesDicts.

API (stable; other modules code against it)::

    FeatureSpec(kind, shape=(), dtype="float32", encoding="none", image_format=None)   # frozen leaf
        kind in {"tensor", "image", "text", "scalar"}; shape: tuple[int | None, ...];
        dtype: numpy-style name ("uint8", "float32", "bool", "string", ...);
        encoding in {"none", "zlib", "bytes"} (tensors only);
        image_format in {"jpeg", "png", None} (None = "unspecified": tfds encodes PNG)
        .is_bytes -> bool   # stored as bytes: image, text, string, zlib/bytes-encoded tensor
    SequenceSpec(feature: dict, length: int | None = None)   # a tfds.features.Dataset (RLDS "steps")

    spec tree = dict[str, FeatureSpec | SequenceSpec | spec tree]

    parse_type_string(s: str) -> FeatureSpec        # "Image(256,256,3) uint8 jpeg", "Tensor(7,) float32 zlib"
    to_type_string(spec: FeatureSpec) -> str         # inverse of parse_type_string
    parse_type_tree(tree: dict) -> spec tree         # leaves = type strings; a dict under "steps" -> SequenceSpec
    as_spec_tree(tree) -> spec tree                  # accepts a spec tree or a type-string tree
    to_type_tree(spec_tree) -> dict                  # inverse: leaves = type strings, steps a plain dict
    parse_features_json(obj: dict) -> spec tree      # the proto-JSON tfds writes as features.json
                                                     # (legacy {"type","content"} JSON: via tfds, lazily)
    load_features_json(url: str) -> spec tree        # via pipeline.fs (local or gs://)
    to_tfds_features(tree) -> tfds.features.FeaturesDict   # tfds imported lazily, only here
    flatten_spec(tree) -> dict[str, FlatFeature]     # "steps/observation/image" -> FlatFeature(spec, in_sequence)
                                                     # (FlatFeature is a frozen dataclass: .spec, .in_sequence,
                                                     #  .path = nested key tuple; keys may contain "/")
    feature_plans(tree, skip_keys=()) -> list[FeaturePlan]   # per flat feature: key, path, spec, in_sequence,
                                                     # values stored per step (the RLDS reader's and writer's plan)
    decode_tensor(data: bytes, spec: FeatureSpec) -> np.ndarray   # a zlib/bytes-encoded tensor value

Type-string notation (the OXE facts file's): ``Image(H,W,C) dtype fmt`` (fmt: jpeg | png | unspecified),
``Tensor(d1,..) dtype [zlib|bytes]``, ``Tensor() dtype``, ``Scalar dtype``, ``Text``, ``string``
(= Tensor((), string)), ``bool`` (= Tensor((), bool)). Trailing notes after the spec — ``# ...``,
``-- ...`` or ``(...)`` — are ignored. Unknown or unverified shapes (``?``) are a ``UserError``.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from pipeline.errors import UserError

__all__ = [
    "FeatureSpec",
    "SequenceSpec",
    "FlatFeature",
    "parse_type_string",
    "to_type_string",
    "parse_type_tree",
    "as_spec_tree",
    "to_type_tree",
    "parse_features_json",
    "load_features_json",
    "to_tfds_features",
    "flatten_spec",
    "FeaturePlan",
    "feature_plans",
    "decode_tensor",
]

KINDS = ("tensor", "image", "text", "scalar")
ENCODINGS = ("none", "zlib", "bytes")
IMAGE_FORMATS = ("jpeg", "png", None)
_DTYPES = ("bool", "string", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
           "float16", "float32", "float64", "bfloat16", "complex64", "complex128")


@dataclass(frozen=True)
class FeatureSpec:
    kind: str
    shape: tuple = ()
    dtype: str = "float32"
    encoding: str = "none"
    image_format: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"FeatureSpec.kind={self.kind!r}: expected one of {KINDS}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"FeatureSpec.encoding={self.encoding!r}: expected one of {ENCODINGS}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"FeatureSpec.image_format={self.image_format!r}: expected jpeg, png or None")
        if self.dtype not in _DTYPES:
            raise ValueError(f"FeatureSpec.dtype={self.dtype!r}: expected one of {_DTYPES}")
        object.__setattr__(self, "shape", tuple(None if d is None or d < 0 else int(d) for d in self.shape))

    @property
    def is_bytes(self) -> bool:
        """True when values are stored as bytes (images, text, strings, zlib/bytes-encoded tensors)."""
        return self.kind in ("image", "text") or self.dtype == "string" or self.encoding != "none"


@dataclass(frozen=True)
class SequenceSpec:
    """A ``tfds.features.Dataset`` (e.g. RLDS ``steps``): a variable-length sequence of ``feature``."""

    feature: dict
    length: int | None = None


@dataclass(frozen=True)
class FlatFeature:
    spec: FeatureSpec
    in_sequence: bool
    path: tuple[str, ...] = ()  # nested keys; a key may itself contain "/" (e.g. kuka's clip_function_input/...)


# ------------------------------------------------------------------------------------- type strings

_HEAD = re.compile(r"^(Image|Tensor)\(([^)]*)\)$")


def _parse_shape(text: str, s: str) -> tuple:
    dims = [d.strip() for d in text.split(",") if d.strip()]
    out = []
    for d in dims:
        if d.lstrip("-").isdigit():
            out.append(int(d))
        elif d == "None":
            out.append(None)
        else:
            raise UserError(f"type string {s!r}: shape dimension {d!r} is not an integer; write e.g. Tensor(7,) float32")
    return tuple(out)


def _strip_notes(s: str) -> list[str]:
    tokens = []
    for tok in s.split():
        if tok.startswith(("#", "--", "(")) and tokens:
            break
        tokens.append(tok)
    return tokens


def parse_type_string(s: str) -> FeatureSpec:
    """Parse one facts-file type string into a ``FeatureSpec`` (UserError naming the string if bad)."""
    if not isinstance(s, str):
        raise UserError(f"feature type {s!r}: expected a type string like 'Tensor(7,) float32'")
    tokens = _strip_notes(s.strip())
    if not tokens:
        raise UserError("empty feature type string; expected e.g. 'Tensor(7,) float32'")
    head, rest = tokens[0], tokens[1:]
    try:
        if head == "Text" and not rest:
            return FeatureSpec("text", (), "string")
        if head in ("string", "bool") and not rest:
            return FeatureSpec("tensor", (), head)
        if head == "Scalar" and len(rest) == 1:
            return FeatureSpec("scalar", (), rest[0])
        m = _HEAD.match(head)
        if m and m.group(1) == "Tensor" and len(rest) in (1, 2):
            encoding = rest[1] if len(rest) == 2 else "none"
            return FeatureSpec("tensor", _parse_shape(m.group(2), s), rest[0], encoding=encoding)
        if m and m.group(1) == "Image" and len(rest) == 2:
            fmt = None if rest[1] == "unspecified" else rest[1]
            return FeatureSpec("image", _parse_shape(m.group(2), s), rest[0], image_format=fmt)
    except ValueError as e:
        raise UserError(f"type string {s!r}: {e}") from e
    raise UserError(
        f"type string {s!r} not understood; expected 'Image(H,W,C) dtype jpeg|png|unspecified', "
        "'Tensor(d,..) dtype [zlib]', 'Scalar dtype', 'Text', 'string' or 'bool'"
    )


def to_type_string(spec: FeatureSpec) -> str:
    shape = ",".join("None" if d is None else str(d) for d in spec.shape)
    if spec.kind == "text":
        return "Text"
    if spec.kind == "scalar":
        return f"Scalar {spec.dtype}"
    if spec.kind == "image":
        return f"Image({shape}) {spec.dtype} {spec.image_format or 'unspecified'}"
    if spec.shape == () and spec.encoding == "none" and spec.dtype in ("string", "bool"):
        return spec.dtype
    if len(spec.shape) == 1:
        shape += ","
    enc = "" if spec.encoding == "none" else f" {spec.encoding}"
    return f"Tensor({shape}) {spec.dtype}{enc}"


def parse_type_tree(tree: dict, *, _path: str = "") -> dict:
    """Type-string tree -> spec tree. The top-level ``steps`` dict becomes a ``SequenceSpec``."""
    if not isinstance(tree, dict):
        raise UserError(f"features{'/' + _path if _path else ''}: expected a dict of type strings")
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{_path}/{key}" if _path else key
        if isinstance(value, (FeatureSpec, SequenceSpec)):
            out[key] = value
        elif isinstance(value, dict):
            sub = parse_type_tree(value, _path=path)
            out[key] = SequenceSpec(sub) if path == "steps" else sub
        else:
            try:
                out[key] = parse_type_string(value)
            except UserError as e:
                raise UserError(f"features key '{path}': {e}") from e
    return out


def as_spec_tree(tree: dict) -> dict:
    """Return a spec tree; type-string leaves (and a plain ``steps`` dict) are converted."""
    return parse_type_tree(tree)


def to_type_tree(tree: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, SequenceSpec):
            out[key] = to_type_tree(value.feature)
        elif isinstance(value, dict):
            out[key] = to_type_tree(value)
        else:
            out[key] = to_type_string(value)
    return out


def flatten_spec(tree: dict, *, _prefix: tuple[str, ...] = (), _in_seq: bool = False) -> dict[str, FlatFeature]:
    """Flatten to ``{"steps/observation/image": FlatFeature(spec, in_sequence=True, path), ...}`` (tree order).

    The flat key is the tfds record key ("/".join(path)); ``path`` keeps the nested keys.
    """
    out: dict[str, FlatFeature] = {}
    for key, value in tree.items():
        path = (*_prefix, key)
        if isinstance(value, SequenceSpec):
            if _in_seq:
                raise UserError(f"feature '{'/'.join(path)}': nested sequences are not supported")
            out.update(flatten_spec(value.feature, _prefix=path, _in_seq=True))
        elif isinstance(value, dict):
            out.update(flatten_spec(value, _prefix=path, _in_seq=_in_seq))
        else:
            out["/".join(path)] = FlatFeature(value, _in_seq, path)
    return out


class FeaturePlan(NamedTuple):
    """How one flat feature is stored in a ``tf.train.Example`` (shared by the RLDS reader and writer)."""

    key: str                 # flat key, e.g. "steps/observation/image"
    parts: tuple[str, ...]   # nested output path
    spec: FeatureSpec
    in_sequence: bool
    numel: int               # stored values per step (or per episode value); -1 if a dim is unknown


def _stored_numel(spec: FeatureSpec) -> int:
    """Number of stored list values per step: 1 for an image/text/encoded tensor, else prod(shape)."""
    if spec.kind in ("image", "text") or spec.encoding != "none":
        return 1
    return -1 if any(d is None for d in spec.shape) else math.prod(spec.shape)


def feature_plans(features: Any, skip_keys: Iterable[str] = ()) -> list[FeaturePlan]:
    """One :class:`FeaturePlan` per flat feature of ``features`` (type-string or spec tree), minus
    ``skip_keys`` (flat paths or prefixes). Per-step tensors with an unknown dimension are a UserError."""
    skips = tuple(k.strip("/") for k in skip_keys)
    plans = []
    for key, flat in flatten_spec(as_spec_tree(features)).items():
        if any(key == s or key.startswith(s + "/") for s in skips):
            continue
        parts = flat.path
        if flat.in_sequence and _stored_numel(flat.spec) < 0:
            raise UserError(f"feature '{key}': per-step tensors with unknown dimensions {flat.spec.shape} "
                            "(tfds ragged encoding) are not supported; give the full shape")
        plans.append(FeaturePlan(key, parts, flat.spec, flat.in_sequence, _stored_numel(flat.spec)))
    return plans


def decode_tensor(data: bytes, spec: FeatureSpec) -> np.ndarray:
    """Decode one zlib/bytes-encoded tensor value to ``spec.shape`` / ``spec.dtype``."""
    raw = zlib.decompress(data) if spec.encoding == "zlib" else data
    arr = np.frombuffer(raw, dtype=np.dtype(spec.dtype).newbyteorder("<"))
    return arr.astype(spec.dtype).reshape([-1 if d is None else d for d in spec.shape])


# ------------------------------------------------------------------------------------ features.json

_CLASS_PREFIX = "tensorflow_datasets.core.features."


def _json_shape(obj: dict) -> tuple:
    return tuple(int(d) for d in obj.get("shape", {}).get("dimensions", []))


def _parse_feature_json(obj: dict, path: str) -> Any:
    cls = obj.get("pythonClassName", "")
    short = cls.rsplit(".", 1)[-1]
    if "featuresDict" in obj:
        feats = obj["featuresDict"].get("features", {})
        return {k: _parse_feature_json(v, f"{path}/{k}" if path else k) for k, v in feats.items()}
    if "sequence" in obj:
        seq = obj["sequence"]
        length = int(seq.get("length", -1))
        inner = _parse_feature_json(seq["feature"], path)
        if short != "Dataset":
            raise UserError(f"features.json key '{path}': tfds {short} sequences are not supported (only Dataset)")
        if not isinstance(inner, dict):
            inner = {"": inner}
        return SequenceSpec(inner, None if length < 0 else length)
    if "image" in obj:
        img = obj["image"]
        fmt = img.get("encodingFormat") or None
        return FeatureSpec("image", _json_shape(img), img.get("dtype", "uint8"), image_format=fmt)
    if "text" in obj:
        return FeatureSpec("text", (), "string")
    if "tensor" in obj:
        t = obj["tensor"]
        kind = "scalar" if short == "Scalar" else "tensor"
        return FeatureSpec(kind, _json_shape(t), t.get("dtype", "float32"), encoding=t.get("encoding", "none"))
    if "classLabel" in obj:
        return FeatureSpec("scalar", (), "int64")
    raise UserError(f"features.json key '{path or '<root>'}': unsupported feature class {cls or obj!r}")


def _legacy_to_proto_json(obj: dict) -> dict:
    """Old tfds ``{"type": ..., "content": ...}`` features.json -> proto-JSON (imports tfds)."""
    import tensorflow_datasets as tfds
    from google.protobuf import json_format

    try:
        feature = tfds.features.FeatureConnector.from_json(obj)
    except Exception as e:  # tfds raises many types here
        raise UserError(f"features.json (legacy type/content format) could not be read by tfds: {e}") from e
    return json_format.MessageToDict(feature.to_proto())


def parse_features_json(obj: dict) -> dict:
    """Parse a tfds ``features.json`` (proto-JSON; legacy type/content JSON via tfds) into a spec tree."""
    if isinstance(obj, dict) and "type" in obj and "content" in obj:
        obj = _legacy_to_proto_json(obj)
    tree = _parse_feature_json(obj, "")
    if not isinstance(tree, dict):
        raise UserError("features.json: the root feature must be a FeaturesDict")
    return tree


def load_features_json(url: str) -> dict:
    from pipeline import fs

    if not fs.exists(url):
        raise UserError(f"{url} not found; expected a TFDS builder directory with features.json")
    return parse_features_json(fs.read_json(url))


# ---------------------------------------------------------------------------------------------- tfds

def _to_tfds_feature(value: Any, tfds: Any) -> Any:
    f = tfds.features
    if isinstance(value, SequenceSpec):
        return f.Dataset(_to_tfds_feature(value.feature, tfds), length=value.length)
    if isinstance(value, dict):
        return f.FeaturesDict({k: _to_tfds_feature(v, tfds) for k, v in value.items()})
    spec: FeatureSpec = value
    dtype = np.str_ if spec.dtype == "string" else np.dtype(spec.dtype).type
    if spec.kind == "text":
        return f.Text()
    if spec.kind == "image":
        return f.Image(shape=spec.shape, dtype=dtype, encoding_format=spec.image_format)
    if spec.kind == "scalar":
        return f.Scalar(dtype=dtype)
    encoding = {"none": f.Encoding.NONE, "zlib": f.Encoding.ZLIB, "bytes": f.Encoding.BYTES}[spec.encoding]
    return f.Tensor(shape=spec.shape, dtype=dtype, encoding=encoding)


def to_tfds_features(tree: dict):
    """Build a ``tfds.features.FeaturesDict`` from a type-string or spec tree (imports tfds)."""
    import tensorflow_datasets as tfds

    return _to_tfds_feature(as_spec_tree(tree), tfds)
