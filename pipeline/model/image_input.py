"""Frames -> the pixel tensor a VLA reads, with the training stream's pixels.

    loaded = load_pretrained_vla(url)                      # pipeline.model.pretrained
    pre = ImagePreprocess.from_train_config(loaded.train_config, loaded.model.config)  # size + crop as trained
    frames = pre.frames([camera_rgb, jpeg_bytes])          # uint8 [B, H, W, 3] (CPU, PIL Lanczos)
    pixels = pixels_from_uint8(torch.from_numpy(frames).to(device), torch.bfloat16)   # [B, 3, H, W]

The resize is :func:`pipeline.data.stream.frames.prepare_image`, the stream's own decode + Lanczos resize,
so a frame gives the same uint8 pixels in training and at inference. The scale to [0, 1] multiplies
by float32(1/255) as the stream does, so the float pixels are bit-identical too. On a GPU only
that scale (and each vision tower's normalization) runs on the device: the resize stays in PIL on
the CPU because no GPU kernel reproduces PIL's Lanczos bit for bit (torch offers bilinear/bicubic
antialiasing only), and the uint8 upload is 4x smaller than a float one.

Size: ``data.resolution`` of the export's ``train_config.yaml`` (written by ``vla export``), else
the model's ``image_size``. Centre crop: on when the model was trained with ``data.stream.augment``
(``data.augment`` in configs written before; random crops of 0.9 area), as OpenVLA evaluates
crop-trained models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline import fs
from pipeline.data.stream.frames import prepare_image
from pipeline.errors import UserError
from pipeline.model.pretrained import TRAIN_CONFIG_FILE

__all__ = ["TRAIN_CONFIG_FILE", "ImagePreprocess", "pixels_from_uint8"]

_SCALE = np.float32(1.0 / 255.0)  # the stream's uint8 -> float factor (frames.decode_batch)


@dataclass(frozen=True, kw_only=True)
class ImagePreprocess:
    """``size``: square side the frames are resized to; ``center_crop``: crop 0.9 of the area first."""

    size: int
    center_crop: bool = False

    @classmethod
    def from_train_config(cls, text: str | None, model_config: Any, *, center_crop: bool | None = None,
                          where: str = "") -> ImagePreprocess:
        """The preprocessing of a run whose ``train_config.yaml`` is ``text`` (None: the model's
        image size, no crop); ``center_crop`` given: overrides it."""
        data = _train_data_config(text, fs.join(where, TRAIN_CONFIG_FILE) if where else TRAIN_CONFIG_FILE)
        size = int(data.get("resolution") or 0) or int(model_config.image_size)
        stream = data.get("stream") if isinstance(data.get("stream"), dict) else {}
        augment = stream.get("augment", data.get("augment", False))  # data.augment: configs before data.stream
        crop = bool(augment) if center_crop is None else bool(center_crop)
        return cls(size=size, center_crop=crop)

    def frames(self, images: Sequence[Any]) -> np.ndarray:
        """uint8 [B, size, size, 3] from encoded JPEG/PNG bytes, uint8 [H, W, 3] RGB arrays, PIL
        images, or float [3, H, W] in [0, 1] (rounded to uint8 first: exact for x = k/255)."""
        out = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = prepare_image(_as_uint8(image), (self.size, self.size), center_crop=self.center_crop)
        return out


def pixels_from_uint8(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, H, W, 3] (any device) -> ``dtype`` [B, 3, H, W] in [0, 1], scaled in float32 exactly
    as the stream scales its frames."""
    x = frames.permute(0, 3, 1, 2).to(torch.float32) * torch.tensor(float(_SCALE), dtype=torch.float32)
    return x.to(dtype)


def _as_uint8(image: Any) -> Any:
    """Float CHW pixels in [0, 1] (numpy or torch) -> uint8 HWC; anything else unchanged."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray) and image.dtype.kind == "f":
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image: float {tuple(image.shape)}, expected [3,H,W] in [0,1] or uint8 [H,W,3]")
        return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
    return image


def _train_data_config(text: str | None, path: str) -> dict[str, Any]:
    """The ``data`` section of a training config's YAML ``text`` ({} when there is none)."""
    if text is None:
        return {}
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    data = doc.get("data", {}) if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with a `data` section (the run's config.yaml)")
    return data
