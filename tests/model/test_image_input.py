"""Inference sees the training stream's pixels: the same JPEG gives bit-identical float pixels through
the stream (frames.decode_batch / decode_resize) and through VLAPolicy / ImagePreprocess, with and
without the centre crop; the export's train_config.yaml switches the crop and the size."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.stream.decode_pool import decode_batch
from pipeline.data.stream.frames import AugmentParams, crop_box, decode_resize, process_frame
from pipeline.errors import UserError
from pipeline.model.image_input import TRAIN_CONFIG_FILE, ImagePreprocess, pixels_from_uint8

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vla_export_helpers import export_tiny  # noqa: E402

CENTER = AugmentParams(crop_x=0.5, crop_y=0.5, brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0)


def _camera_jpeg(h: int, w: int, seed: int = 0) -> bytes:
    """A smooth camera-like frame, JPEG-encoded as RLDS datasets store frames."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((w, h), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def _training_pixels(data: bytes, size: int, *, crop: bool) -> np.ndarray:
    """float32 [3, H, W] as the stream makes them (the crop: the centre draw of its random crop)."""
    if not crop:
        pixels, bad = decode_batch([(0, (data,))], size=(size, size), augment=False, seed=0, epoch=0)
        assert bad == []
        return pixels[0, 0]
    frame = decode_resize(data, (size, size), CENTER).astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(frame.transpose(2, 0, 1))


@pytest.mark.parametrize("source", [(480, 640), (256, 320), (100, 100)])  # >= 2x the target, ~1.3x, upscale
@pytest.mark.parametrize("crop", [False, True])
def test_inference_pixels_equal_training_pixels(source, crop):
    data = _camera_jpeg(*source)
    pre = ImagePreprocess(size=224, center_crop=crop)
    expected = _training_pixels(data, 224, crop=crop)
    array, pil = _decoded(data), Image.open(io.BytesIO(data))
    for image in (array, data, pil):  # a robot's decoded frame, the JPEG bytes (vla serve), a PIL image
        got = pixels_from_uint8(torch.from_numpy(pre.frames([image])))[0].numpy()
        np.testing.assert_array_equal(got, expected)
    other = _training_pixels(data, 224, crop=not crop)
    assert not np.array_equal(expected, other)  # the crop changes the pixels: the comparison has teeth


def test_float_pixels_from_the_stream_round_trip_exactly():
    data = _camera_jpeg(256, 320, seed=3)
    stream = process_frame(data, (112, 112))  # float32 [3, H, W] = uint8 * float32(1/255)
    pre = ImagePreprocess(size=112)
    for image in (stream, torch.from_numpy(stream)):
        np.testing.assert_array_equal(pixels_from_uint8(torch.from_numpy(pre.frames([image])))[0].numpy(), stream)
    with pytest.raises(ValueError, match=r"expected \[3,H,W\]"):
        pre.frames([stream.transpose(1, 2, 0)])


def test_crop_box_is_openvla_center_crop_geometry():
    # sqrt(0.9) of each side (OpenVLA: crop_and_resize with height and width scaled by sqrt(crop_scale),
    # offsets (1 - sqrt(0.9)) / 2); a non-square source keeps its aspect ratio, as in training
    side = np.sqrt(0.9)
    np.testing.assert_allclose(crop_box(640, 480, 0.5, 0.5),
                               [320 * (1 - side), 240 * (1 - side), 320 * (1 + side), 240 * (1 + side)])
    np.testing.assert_allclose(crop_box(200, 100, 0.0, 1.0), [0.0, 100 * (1 - side), 200 * side, 100.0])


def test_preprocess_from_the_exports_training_config(tmp_path, one_torch_thread):
    from pipeline import fs
    from pipeline.config import to_yaml
    from pipeline.inference import VLAPolicy
    from pipeline.train.config import TrainConfig
    from pipeline.train.finetune import FinetuneConfig

    url = export_tiny(str(tmp_path / "export"))
    assert VLAPolicy.from_pretrained(url).preprocess == ImagePreprocess(size=112, center_crop=False)
    cfg_path = fs.join(url, TRAIN_CONFIG_FILE)
    fs.write_text(cfg_path, to_yaml(FinetuneConfig(base="base")))  # vla finetune: data.stream.augment=true
    policy = VLAPolicy.from_pretrained(url)
    assert policy.preprocess == ImagePreprocess(size=112, center_crop=True)
    data = _camera_jpeg(240, 320, seed=5)
    np.testing.assert_array_equal(policy.pixel_values([_decoded(data)])[0].numpy(),
                                  _training_pixels(data, 112, crop=True))
    assert not VLAPolicy.from_pretrained(url, center_crop=False).preprocess.center_crop
    fs.write_text(cfg_path, to_yaml(TrainConfig()).replace("resolution: 0", "resolution: 96"))
    assert VLAPolicy.from_pretrained(url).preprocess == ImagePreprocess(size=96, center_crop=False)
    fs.write_text(cfg_path, "data: [1, 2\n")
    with pytest.raises(UserError, match=f"{TRAIN_CONFIG_FILE}: not valid YAML"):
        VLAPolicy.from_pretrained(url)
