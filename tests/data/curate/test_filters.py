"""Curation filters and the quarantine report: each filter switchable, every drop counted."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.data.curate.filters import (
    FilterConfig,
    apply_frame_filter,
    check_episode,
    registry_episode_filters,
)
from pipeline.data.curate.quarantine import Quarantine, format_quarantine
from pipeline.data.schema import validate_episode


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _episode(t: int = 5, instruction: str = "pick the block") -> dict:
    img = np.empty(t, object)
    img[:] = [_jpeg()] * t
    empty = np.empty(t, object)
    empty[:] = [b""] * t
    lang = np.empty(t, object)
    lang[:] = [instruction] * t
    action = np.zeros((t, 7), np.float32)
    action[:, :6] = 0.01
    action[:, 6] = 1.0
    return {
        "dataset_name": "bridge_orig", "episode_id": "ep-1", "source_file": "/x/s-00000", "source_index": 3,
        "steps": {"image_primary": img, "image_secondary": empty.copy(), "image_wrist": empty.copy(),
                  "proprio": np.zeros((t, 8), np.float32), "action": action, "language_instruction": lang,
                  "is_first": np.arange(t) == 0, "is_last": np.arange(t) == t - 1,
                  "is_terminal": np.arange(t) == t - 1},
    }


def test_clean_episode_is_kept():
    ep = _episode()
    assert validate_episode(ep) == []
    assert check_episode(ep, FilterConfig()) is None


@pytest.mark.parametrize("mutate,reason,switch", [
    (lambda ep: ep["steps"]["action"].__setitem__((1, 2), np.nan), "nan_inf", {"drop_nan_inf": False}),
    (lambda ep: ep["steps"]["proprio"].__setitem__((0, 0), np.inf), "nan_inf", {"drop_nan_inf": False}),
    (lambda ep: ep["steps"]["action"].__setitem__((2, 0), 500.0), "action_magnitude", {"max_abs_action": 0.0}),
    (lambda ep: ep["steps"]["language_instruction"].__setitem__(slice(None), ""), "empty_instruction",
     {"drop_empty_instruction": False}),
    (lambda ep: ep["steps"]["image_primary"].__setitem__(0, b"\xff\xd8not a jpeg"), "undecodable_image",
     {"check_images": False}),
])
def test_each_filter_drops_and_can_be_switched_off(mutate, reason, switch):
    ep = _episode()
    mutate(ep)
    assert check_episode(ep, FilterConfig()) == reason
    assert check_episode(ep, FilterConfig(**switch)) is None


def test_min_steps_and_gripper_not_bounded():
    ep = _episode(t=3)
    assert check_episode(ep, FilterConfig(min_steps=4)) == "too_short"
    assert check_episode(ep, FilterConfig(min_steps=3)) is None
    ep["steps"]["action"][:, 6] = 1000.0  # the gripper dim is not a movement dim
    assert check_episode(ep, FilterConfig(max_abs_action=1.0)) is None


def test_image_probe_checks_several_frames():
    ep = _episode(t=6)
    ep["steps"]["image_primary"][5] = b"garbage"
    assert check_episode(ep, FilterConfig(image_check_frames=1)) is None  # only frame 0 probed
    assert check_episode(ep, FilterConfig(image_check_frames=2)) == "undecodable_image"  # first + last


def test_registry_filters_and_frame_filter():
    spec = SimpleNamespace(episode_filters=(("kuka_success", lambda raw: bool(raw["success"])),),
                           frame_filter=("droid_idle", lambda ep, norm: np.abs(norm[:, 0]) > 0))
    assert registry_episode_filters({"success": np.bool_(False)}, spec, FilterConfig()) == "kuka_success"
    assert registry_episode_filters({"success": np.bool_(False)}, spec, FilterConfig(registry_filters=False)) is None
    ep = _episode(t=5)
    ep["steps"]["action"][[0, 3], 0] = 0.0
    out, dropped, reason = apply_frame_filter(ep, spec, FilterConfig(), ep["steps"]["action"] * 2)
    assert (dropped, reason, len(out["steps"]["action"])) == (2, "droid_idle", 3)
    assert out["steps"]["is_first"].tolist() == [True, False, False]
    assert out["steps"]["is_last"].tolist() == [False, False, True]
    assert validate_episode(out) == []
    ep["steps"]["action"][:, 0] = 0.0
    assert apply_frame_filter(ep, spec, FilterConfig(), ep["steps"]["action"])[0] is None
    assert apply_frame_filter(ep, spec, FilterConfig(frame_filter=False), ep["steps"]["action"])[1] == 0


def test_quarantine_merge_and_table():
    a, b = Quarantine("bridge_orig", max_examples=2), Quarantine("bridge_orig", max_examples=2)
    for i in range(3):
        a.drop("nan_inf", frames=10, episode_id=f"e{i}", source_file="gs://b/s-0", source_index=i)
    b.drop("too_short", frames=1, episode_id="x", source_file="gs://b/s-1", source_index=0)
    b.keep(20)
    a.merge(Quarantine.from_json(b.to_json(), 2))
    js = a.to_json()
    assert js["episodes_dropped"] == 4 and js["frames_dropped"] == 31 and js["frames_kept"] == 20
    assert len(js["reasons"]["nan_inf"]["examples"]) == 2
    table = format_quarantine([a])
    assert "nan_inf" in table and "e0 @ s-0#0" in table
    with pytest.raises(ValueError, match="min_steps"):
        FilterConfig(min_steps=-1)
