"""Per-frame image transforms: decode, resize, optional augmentation, to float [0, 1].

Pure functions on one frame's ENCODED bytes (JPEG or PNG). Keys read: the encoded image bytes of one
camera (``b""`` = camera missing -> zeros). Output: float32 [3, H, W] in [0, 1].

- decode: PIL; for JPEG ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the
  target is at least 2x smaller than the source (cheap and still followed by a Lanczos resize).
- resize: Lanczos (PIL's LANCZOS filter is antialiased: its support widens when downscaling), like
  OpenVLA's Lanczos3 + antialias resize to 224x224.
- augmentation (train-time, off by default, OpenVLA order): random resized crop (area scale 0.9,
  aspect ratio 1), brightness +-0.2, contrast 0.8-1.2, saturation 0.8-1.2, hue +-0.05, each followed
  by a clip to [0, 1]. The crop is taken on the SOURCE image and resized straight to the target size
  (one Lanczos resize instead of OpenVLA's resize -> crop -> bilinear resize back).
- every random draw comes from ``sample_augment(rng)`` with ``rng`` seeded by the caller from
  (seed, epoch, global sample index), so a frame's augmentation does not depend on worker count.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

from pipeline.data.io.errors import CorruptImageError

__all__ = [
    "AugmentParams",
    "sample_augment",
    "decode_resize",
    "apply_color_augment",
    "process_frame",
    "frame_rng",
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


def _crop_box(width: int, height: int, params: AugmentParams) -> tuple[float, float, float, float]:
    side = min(float(np.sqrt(CROP_SCALE * width * height)), float(width), float(height))
    x0 = (width - side) * params.crop_x
    y0 = (height - side) * params.crop_y
    return (x0, y0, x0 + side, y0 + side)


def decode_resize(data: bytes, size: tuple[int, int], augment: AugmentParams | None = None) -> np.ndarray:
    """Decode ``data`` and resize to ``size`` = (H, W); returns uint8 [H, W, 3]. Bytes that do not
    decode raise :class:`~pipeline.data.io.errors.CorruptImageError`."""
    from PIL import Image

    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as img:
            src_w, src_h = img.size
            scale = 1.0 if augment is None else float(np.sqrt(CROP_SCALE))
            if img.format == "JPEG" and min(src_w * scale / width, src_h * scale / height) >= 2.0:
                img.draft("RGB", (int(np.ceil(width / scale)), int(np.ceil(height / scale))))
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"image bytes do not decode: {type(e).__name__}: {e}") from None
    box = None
    if augment is not None:
        # the draw is relative to the (possibly draft-reduced) decoded size
        box = _crop_box(rgb.size[0], rgb.size[1], augment)
    if rgb.size != (width, height) or box is not None:
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS, box=box)
    return np.asarray(rgb, dtype=np.uint8)


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
