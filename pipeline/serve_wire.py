"""The ``POST /act`` wire formats of ``vla serve`` (request parsing and answers; no HTTP here).

Two request styles, answered in kind:

- ours: ``{"image": <base64 PNG/JPEG>, "instruction": str, "unnorm_key": str|null}`` ->
  ``{"action": [7 floats], "unnorm_key": str|null, "latency_ms": float}``.
- OpenVLA's deploy client (``vla-scripts/deploy.py`` with ``json_numpy.patch()``): the same keys, but
  ``image`` is a json_numpy array ``{"__numpy__": <base64 of the C-order bytes>, "dtype": "|u1",
  "shape": [H, W, 3]}`` (``dtype`` is numpy's descr; a dtype name such as ``"uint8"`` and the
  ``"__ndarray__"`` key of other encoders are accepted too) -> the action itself as a json_numpy
  array (float32, shape [7]), which that client's ``response.json()`` turns back into an ndarray.
  Its ``{"encoded": "<that JSON as a string>"}`` variant (for clients without json_numpy) is answered
  with the answer as a JSON string, as OpenVLA's server does.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ActRequest", "BadRequest", "decode_image", "encode_ndarray", "parse_act_request"]

_ARRAY_KEYS = ("__numpy__", "__ndarray__")
_HINT = '{"image": base64 PNG/JPEG or json_numpy uint8 [H,W,3], "instruction": str}'


class BadRequest(Exception):
    """A client mistake: answered with 400 and the message."""


@dataclass(frozen=True)
class ActRequest:
    """A parsed ``/act`` body: ``style`` is "base64", "json_numpy" or "encoded" (how to answer)."""

    image: np.ndarray  # uint8 [H, W, 3]
    instruction: str
    unnorm_key: str | None
    style: str = "base64"

    def answer(self, action: np.ndarray, unnorm_key: str | None, latency_ms: float) -> Any:
        """The JSON value to send back for this request's style."""
        if self.style == "base64":
            return {"action": [float(v) for v in action], "unnorm_key": unnorm_key, "latency_ms": round(latency_ms, 3)}
        encoded = encode_ndarray(np.asarray(action, dtype=np.float32))
        return json.dumps(encoded) if self.style == "encoded" else encoded


def encode_ndarray(array: np.ndarray) -> dict[str, Any]:
    """json_numpy's encoding of ``array``: base64 of its C-order bytes, numpy dtype descr, shape."""
    data = np.ascontiguousarray(array)
    return {"__numpy__": base64.b64encode(data.tobytes()).decode("ascii"),
            "dtype": np.lib.format.dtype_to_descr(data.dtype), "shape": list(data.shape)}


def decode_image(data: str) -> np.ndarray:
    """base64 text (optionally a ``data:image/...;base64,`` URL) of a PNG/JPEG -> uint8 [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    raw = _b64(data, "image")
    if not raw:
        raise BadRequest("image: empty")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise BadRequest(f"image: {im.format} is not supported; send PNG or JPEG")
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadRequest(f"image: cannot decode as PNG or JPEG ({type(e).__name__})") from e


def _b64(text: str, what: str) -> bytes:
    text = "".join(text.split())  # line-wrapped base64 (e.g. the base64 tool's 76 columns) is fine
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{what}: not valid base64 ({e})") from e


def _decode_array_image(obj: dict[str, Any]) -> np.ndarray:
    """A json_numpy array object -> uint8 [H, W, 3]."""
    key = next(k for k in _ARRAY_KEYS if k in obj)
    if not isinstance(obj[key], str) or "dtype" not in obj or "shape" not in obj:
        raise BadRequest(f"image: a json_numpy array needs {key!r} (base64 str), 'dtype' and 'shape'")
    try:
        dtype = np.dtype(obj["dtype"]) if isinstance(obj["dtype"], str) else None
    except TypeError:
        dtype = None
    if dtype != np.uint8:
        raise BadRequest(f"image: dtype {obj['dtype']!r}, expected uint8 ('|u1')")
    shape = obj["shape"]
    if (not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3
            or not all(isinstance(n, int) and n > 0 for n in shape)):
        raise BadRequest(f"image: shape {shape!r}, expected [H, W, 3]")
    raw = _b64(obj[key], "image")
    if len(raw) != shape[0] * shape[1] * 3:
        raise BadRequest(f"image: {len(raw)} bytes of data for shape {shape} ({shape[0] * shape[1] * 3} expected)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _image(value: Any) -> tuple[np.ndarray, bool]:
    """(uint8 [H, W, 3], whether it came as a json_numpy array)."""
    if isinstance(value, str):
        return decode_image(value), False
    if isinstance(value, dict) and any(k in value for k in _ARRAY_KEYS):
        return _decode_array_image(value), True
    raise BadRequest(f"image: expected a base64 string or a json_numpy array, got {type(value).__name__}")


def parse_act_request(body: bytes) -> ActRequest:
    """Validate a /act body (see the module docstring)."""
    req = _json_object(body, "body")
    style = None
    if set(req) == {"encoded"}:
        if not isinstance(req["encoded"], str):
            raise BadRequest("encoded: expected a JSON string")
        req, style = _json_object(req["encoded"], "encoded"), "encoded"
    for key in ("image", "instruction"):
        if key not in req:
            raise BadRequest(f"missing field {key!r}; expected {_HINT}")
    if not isinstance(req["instruction"], str):
        raise BadRequest(f"instruction: expected a string, got {type(req['instruction']).__name__}")
    if not req["instruction"].strip():
        raise BadRequest("instruction: empty")
    key = req.get("unnorm_key")
    if key is not None and not isinstance(key, str):
        raise BadRequest(f"unnorm_key: expected a string or null, got {type(key).__name__}")
    image, is_array = _image(req["image"])
    return ActRequest(image, req["instruction"], key, style or ("json_numpy" if is_array else "base64"))


def _json_object(text: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"{what} is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise BadRequest(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj
