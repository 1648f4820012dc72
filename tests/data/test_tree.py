"""Nested-dict helpers and trajectory ops."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import tree as T


def _episode(n: int = 3) -> dict:
    lang = np.empty(n, dtype=object)
    lang[:] = [b"go"] * n
    return {
        "steps": {"action": np.arange(n * 2, dtype=np.float32).reshape(n, 2),
                  "observation": {"image": lang.copy(), "state": np.zeros((n, 3), np.float32)},
                  "language_instruction": lang},
        "episode_metadata": {"file_path": b"/a.h5", "episode_id": np.int64(7)},
        "success": np.bool_(True),
        "_source": {"file": "x", "index": 0},
    }


def test_flatten_unflatten_roundtrip():
    tree = {"a": {"b": {"c": 1}, "d": 2}, "e": 3, "empty": {}}
    flat = T.tree_flatten_with_path(tree)
    assert flat == {"a/b/c": 1, "a/d": 2, "e": 3, "empty": {}}
    assert T.tree_unflatten(flat) == tree
    assert T.tree_flatten_with_path(tree, sep=".")["a.b.c"] == 1


def test_map_merge_select():
    tree = {"a": {"b": 1, "c": 2}, "d": 3}
    assert T.tree_map(lambda x: x * 10, tree) == {"a": {"b": 10, "c": 20}, "d": 30}
    merged = T.tree_merge(tree, {"a": {"c": 5, "z": 6}, "d": {"x": 1}})
    assert merged == {"a": {"b": 1, "c": 5, "z": 6}, "d": {"x": 1}}
    assert tree == {"a": {"b": 1, "c": 2}, "d": 3}  # inputs untouched
    assert T.tree_select(tree, ["a/b", "d"]) == {"a": {"b": 1}, "d": 3}
    assert T.tree_select(tree, ["a"]) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(KeyError, match="a/x"):
        T.tree_select(tree, ["a/x"])
    with pytest.raises(ValueError):
        T.tree_unflatten({"a": 1, "a/b": 2})


def test_add_frame_indices_and_broadcast():
    ep = _episode(3)
    out = T.add_frame_indices(ep)
    assert out["steps"]["frame_index"].tolist() == [0, 1, 2] and "frame_index" not in ep["steps"]
    b = T.broadcast_metadata(ep)
    assert b["steps"]["episode_metadata"]["file_path"].tolist() == [b"/a.h5"] * 3
    assert b["steps"]["episode_metadata"]["episode_id"].tolist() == [7, 7, 7]
    assert b["steps"]["success"].dtype == np.bool_ and "_source" not in b["steps"]
    assert "episode_metadata" not in ep["steps"]
    only = T.broadcast_metadata(ep, keys=["episode_metadata/episode_id"], prefix="meta_")
    assert only["steps"]["meta_episode_metadata"]["episode_id"].shape == (3,)
    with pytest.raises(KeyError):
        T.broadcast_metadata(ep, keys=["nope"])


def test_traj_map_filter_frames():
    eps = [_episode(2), _episode(0), _episode(4)]
    lengths = [T.traj_len(e) for e in T.traj_filter(lambda e: T.traj_len(e) > 0, eps)]
    assert lengths == [2, 4]
    mapped = list(T.traj_map(T.add_frame_indices, eps))
    frames = T.flatten_to_frames(mapped[2])
    assert len(frames) == 4 and frames[3]["frame_index"] == 3
    np.testing.assert_array_equal(frames[1]["action"], [2.0, 3.0])
    assert frames[0]["observation"]["image"] == b"go"
    assert T.flatten_to_frames(eps[1]) == []
    doubled = list(T.frame_map(lambda f: {**f, "action": f["action"] * 2}, frames))
    np.testing.assert_array_equal(doubled[1]["action"], [4.0, 6.0])
    bad = _episode(3)
    bad["steps"]["language_instruction"] = bad["steps"]["language_instruction"][:2]
    with pytest.raises(ValueError, match="steps/language_instruction"):
        T.flatten_to_frames(bad)
