"""Per-frame image transforms: decode, resize, optional augmentation, to float [0, 1].

Pure functions on one frame's ENCODED bytes (JPEG or PNG). Keys read: the encoded image bytes of one
camera (``b""`` = camera missing -> zeros). Output: float32 [3, H, W] in [0, 1].

- decode: PIL, at full scale (no JPEG draft mode: a camera frame at inference has no DCT to scale,
  so a reduced-scale decode here would be pixels inference can never reproduce).
- resize: Lanczos (PIL's LANCZOS filter is antialiased: its support widens when downscaling), like
  OpenVLA's Lanczos3 + antialias resize to 224x224. :func:`resize_rgb` is the one resize that the
  stream and inference (:func:`prepare_image`, used by ``VLAPolicy`` and ``vla serve``) share.
- augmentation (train-time, off by default, OpenVLA order): random resized crop (area scale 0.9,
  aspect ratio 1 in the square training image, i.e. sqrt(0.9) of each side of the source),
  brightness +-0.2, contrast 0.8-1.2, saturation 0.8-1.2, hue +-0.05, each followed by a clip to
  [0, 1]. The crop is taken on the SOURCE image and resized straight to the target size (one Lanczos
  resize instead of OpenVLA's resize -> crop -> bilinear resize back). A model trained with crops
  sees the centre crop at inference (``prepare_image(center_crop=True)``, OpenVLA's eval rule).
- every random draw comes from ``sample_augment(rng)`` with ``rng`` seeded by the caller from
  (seed, epoch, global sample index), so a frame's augmentation does not depend on worker count.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.io.errors import CorruptImageError

__all__ = [
    "AugmentParams",
    "sample_augment",
    "decode_resize",
    "apply_color_augment",
    "process_frame",
    "frame_rng",
    "crop_box",
    "resize_rgb",
    "prepare_image",
]

CROP_SCALE = 0.9
BRIGHTNESS = 0.2
CONTRAST = (0.8, 1.2)
SATURATION = (0.8, 1.2)
HUE = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class AugmentParams:
    """One frame's augmentation draw. ``crop`` = (x0, y0, side) as fractions of the source width/height."""

    crop_x: float  # left edge, fraction of the free horizontal range [0, 1]
    crop_y: float  # top edge, fraction of the free vertical range [0, 1]
    brightness: float  # additive delta
    contrast: float  # factor
    saturation: float  # factor
    hue: float  # shift, fraction of a full turn


def frame_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for global sample ``index`` of ``epoch`` (``stream`` separates cameras)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)])


def sample_augment(rng: np.random.Generator) -> AugmentParams:
    u = rng.random(6)
    return AugmentParams(
        crop_x=float(u[0]),
        crop_y=float(u[1]),
        brightness=float(-BRIGHTNESS + 2 * BRIGHTNESS * u[2]),
        contrast=float(CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * u[3]),
        saturation=float(SATURATION[0] + (SATURATION[1] - SATURATION[0]) * u[4]),
        hue=float(-HUE + 2 * HUE * u[5]),
    )


def crop_box(width: int, height: int, crop_x: float, crop_y: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in source pixels of a crop of area ``CROP_SCALE``: sqrt(CROP_SCALE)
    of each side (OpenVLA: a square crop of the image already resized to a square), its left/top edge
    at fraction ``crop_x``/``crop_y`` of the free range (0.5, 0.5 = the centre crop)."""
    side = float(np.sqrt(CROP_SCALE))
    w, h = side * width, side * height
    x0, y0 = (width - w) * crop_x, (height - h) * crop_y
    return (x0, y0, x0 + w, y0 + h)


def resize_rgb(rgb: Any, size: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """PIL RGB image -> uint8 [H, W, 3] at ``size`` = (H, W) (Lanczos; ``box`` crops first)."""
    from PIL import Image

    height, width = size
    if rgb.size != (width, height) or box is not None:
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS, box=box)
    return np.asarray(rgb, dtype=np.uint8)


def _decode_rgb(data: bytes) -> Any:
    """PIL RGB image of encoded bytes; bytes that do not decode raise CorruptImageError (a data error)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"image bytes do not decode: {type(e).__name__}: {e}") from None


def decode_resize(data: bytes, size: tuple[int, int], augment: AugmentParams | None = None) -> np.ndarray:
    """Decode ``data`` and resize to ``size`` = (H, W); returns uint8 [H, W, 3]. Bytes that do not
    decode raise :class:`~pipeline.data.io.errors.CorruptImageError`."""
    rgb = _decode_rgb(data)
    box = None if augment is None else crop_box(*rgb.size, augment.crop_x, augment.crop_y)
    return resize_rgb(rgb, size, box)


def prepare_image(image: Any, size: tuple[int, int], *, center_crop: bool = False) -> np.ndarray:
    """Inference frame -> uint8 [H, W, 3]: the training stream's decode + resize on encoded bytes
    (JPEG/PNG), a uint8 [H, W, 3] RGB array or a PIL image; ``center_crop`` for crop-trained models."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray, memoryview)):
        rgb = _decode_rgb(bytes(image))
    elif hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image
        rgb = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"image: {array.dtype} {tuple(array.shape)}, expected uint8 [H,W,3] (RGB)")
        rgb = Image.fromarray(np.ascontiguousarray(array))
    box = crop_box(*rgb.size, 0.5, 0.5) if center_crop else None
    return resize_rgb(rgb, size, box)


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1.0), 0.0)
    safe = np.where(delta > 0, delta, 1.0)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return h, s, v


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int32) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices_r = [v, q, p, p, t, v]
    choices_g = [t, v, v, q, p, p]
    choices_b = [p, p, t, v, v, q]
    r = np.choose(i, choices_r)
    g = np.choose(i, choices_g)
    b = np.choose(i, choices_b)
    return np.stack([r, g, b], axis=-1)


def apply_color_augment(img: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Brightness, contrast, saturation, hue (in that order, clip after each) on float [H, W, 3]."""
    x = np.clip(img + params.brightness, 0.0, 1.0)
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = np.clip((x - mean) * params.contrast + mean, 0.0, 1.0)
    # saturation then hue share one HSV round trip: scaling S (clipped to [0, 1]) keeps the image in
    # gamut, so the clip between the two steps is a no-op.
    h, s, v = _rgb_to_hsv(x)
    s = np.clip(s * params.saturation, 0.0, 1.0)
    x = np.clip(_hsv_to_rgb(h + params.hue, s, v), 0.0, 1.0)
    return x.astype(np.float32)


def process_frame(data: bytes, size: tuple[int, int], *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Encoded bytes -> float32 [3, H, W] in [0, 1]. ``rng`` given = augment; ``b""`` -> zeros."""
    height, width = size
    if not data:
        return np.zeros((3, height, width), dtype=np.float32)
    params = sample_augment(rng) if rng is not None else None
    pixels = decode_resize(data, size, params).astype(np.float32) * np.float32(1.0 / 255.0)
    if params is not None:
        pixels = apply_color_augment(pixels, params)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
