"""RLDS builder I/O (io.builder, io.rlds_reader, io.rlds_writer): our reader vs tfds-written data,
our writer vs tfds reader, gs://, corruption."""

from __future__ import annotations

import hashlib
import io
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline import fs
from pipeline.data.io.builder import open_builder, shard_filename
from pipeline.data.io.errors import CorruptRecordError
from pipeline.data.io.features import decode_tensor, parse_type_string
from pipeline.data.io.rlds_reader import ReadStats, iter_dataset, read_episodes
from pipeline.data.io.rlds_writer import write_builder_metadata, write_shard
from pipeline.errors import UserError

FEATURES = {
    "steps": {
        "observation": {
            "image": "Image(8,8,3) uint8 jpeg",
            "depth": "Image(8,8,1) uint16 png",
            "state": "Tensor(3,) float32",
        },
        "action": "Tensor(7,) float32 zlib",
        "mat": "Tensor(2,3) float64",
        "reward": "Scalar float32",
        "count": "Tensor() int32",
        "language_instruction": "Text",
        "is_first": "bool",
        "is_terminal": "bool",
    },
    "episode_metadata": {"file_path": "Text", "episode_id": "Tensor() int64"},
    "success": "bool",
}


def _encode_image(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format=fmt)
    return buf.getvalue()


def _step_values(e: int, t: int) -> dict:
    """Decoded per-step values (what tfds yields / what tfds encodes from)."""
    return {
        "observation": {
            "image": np.full((8, 8, 3), 10 * t + e, np.uint8),
            "depth": np.full((8, 8, 1), 1000 + t, np.uint16),
            "state": np.array([e, t, 0.5], np.float32),
        },
        "action": np.arange(7, dtype=np.float32) + t,
        "mat": np.full((2, 3), t / 3.0),
        "reward": float(t),
        "count": t,
        "language_instruction": f"task {e}",
        "is_first": t == 0,
        "is_terminal": False,
    }


def _raw_episode(e: int, T: int) -> dict:
    """The same episode in raw-episode layout (encoded images, zlib bytes), for our writer."""
    steps = [_step_values(e, t) for t in range(T)]

    def obj(values):
        a = np.empty(len(values), dtype=object)
        a[:] = values
        return a

    return {
        "steps": {
            "observation": {
                "image": obj([_encode_image(s["observation"]["image"], "JPEG") for s in steps]),
                "depth": obj([_encode_image(s["observation"]["depth"], "PNG") for s in steps]),
                "state": np.array([s["observation"]["state"] for s in steps], np.float32).reshape(T, 3),
            },
            "action": obj([zlib.compress(s["action"].tobytes()) for s in steps]),
            "mat": np.array([s["mat"] for s in steps]).reshape(T, 2, 3),
            "reward": np.array([s["reward"] for s in steps], np.float32),
            "count": np.array([s["count"] for s in steps], np.int32),
            "language_instruction": obj([s["language_instruction"].encode() for s in steps]),
            "is_first": np.array([s["is_first"] for s in steps], bool),
            "is_terminal": np.zeros(T, bool),
        },
        "episode_metadata": {"file_path": f"/src/{e}.h5".encode(), "episode_id": np.int64(e)},
        "success": np.bool_(e % 2 == 0),
    }


LENGTHS = [3, 0, 5, 2]  # includes an empty steps dataset


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A dataset written by tfds itself (GeneratorBasedBuilder), 2 shards."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from pipeline.data.io.features import to_tfds_features

    class RldsTinyForTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=to_tfds_features(FEATURES))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for e, T in enumerate(LENGTHS):
                yield e, {"steps": [_step_values(e, t) for t in range(T)],
                          "episode_metadata": {"file_path": f"/src/{e}.h5", "episode_id": e},
                          "success": e % 2 == 0}

    root = tmp_path_factory.mktemp("tfds")
    builder = RldsTinyForTest(data_dir=str(root))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=2))
    return os.path.join(str(root), "rlds_tiny_for_test")


def _check_raw(ep: dict, e: int) -> None:
    T = LENGTHS[e]
    steps = ep["steps"]
    assert steps["observation"]["image"].dtype == object and steps["observation"]["image"].shape == (T,)
    assert steps["observation"]["state"].dtype == np.float32 and steps["observation"]["state"].shape == (T, 3)
    assert steps["mat"].shape == (T, 2, 3) and steps["mat"].dtype == np.float64
    assert steps["count"].dtype == np.int32 and steps["reward"].dtype == np.float32
    assert steps["is_first"].dtype == np.bool_ and steps["action"].dtype == object
    for t in range(T):
        want = _step_values(e, t)
        img = np.asarray(Image.open(io.BytesIO(steps["observation"]["image"][t])))
        assert np.abs(img.astype(int) - want["observation"]["image"]).max() <= 3  # jpeg
        assert steps["observation"]["depth"][t].startswith(b"\x89PNG")
        depth = np.asarray(Image.open(io.BytesIO(steps["observation"]["depth"][t])))
        np.testing.assert_array_equal(depth.reshape(8, 8, 1), want["observation"]["depth"])
        np.testing.assert_array_equal(steps["observation"]["state"][t], want["observation"]["state"])
        np.testing.assert_array_equal(decode_tensor(steps["action"][t], parse_type_string("Tensor(7,) float32 zlib")),
                                      want["action"])
        np.testing.assert_allclose(steps["mat"][t], want["mat"], rtol=1e-6)  # tfds stores float32
        assert steps["reward"][t] == want["reward"] and steps["count"][t] == t
        assert steps["language_instruction"][t] == f"task {e}".encode()
        assert bool(steps["is_first"][t]) == (t == 0)
    assert ep["episode_metadata"]["file_path"] == f"/src/{e}.h5".encode()
    assert ep["episode_metadata"]["episode_id"] == e and isinstance(ep["episode_metadata"]["episode_id"], np.int64)
    assert isinstance(ep["success"], np.bool_) and bool(ep["success"]) == (e % 2 == 0)


def test_read_tfds_written_dataset(tfds_dir):
    info = open_builder(tfds_dir)  # picks the version dir
    assert info.name == "rlds_tiny_for_test" and info.version == "1.0.0"
    assert len(info.splits["train"]) == 2 and info.num_episodes("train") == len(LENGTHS)
    from pipeline.data.io.features import parse_type_tree

    assert info.features == parse_type_tree(FEATURES)
    episodes = list(iter_dataset(tfds_dir, num_workers=2))
    assert len(episodes) == len(LENGTHS)
    for ep in episodes:
        e = int(ep["episode_metadata"]["episode_id"])
        _check_raw(ep, e)
        assert ep["_source"]["file"].startswith(info.url)
    # per-shard reading with _source, and skip_keys
    shard = info.splits["train"][0]
    eps = list(read_episodes(shard.url, info.features, skip_keys=["steps/observation/image", "episode_metadata"]))
    assert len(eps) == shard.num_episodes
    assert [ep["_source"]["index"] for ep in eps] == list(range(shard.num_episodes))
    assert "image" not in eps[0]["steps"]["observation"] and "episode_metadata" not in eps[0]
    assert "depth" in eps[0]["steps"]["observation"]


def test_iter_dataset_order_and_early_stop(tfds_dir):
    info = open_builder(tfds_dir)
    a = [ep["_source"]["index"] for ep in iter_dataset(tfds_dir, num_workers=1)]
    b = [ep["_source"]["index"] for ep in iter_dataset(tfds_dir, num_workers=3, prefetch=1)]
    assert a == b
    only = list(iter_dataset(tfds_dir, shard_indices=[1]))
    assert len(only) == info.splits["train"][1].num_episodes
    gen = iter_dataset(tfds_dir, num_workers=2, prefetch=1)
    next(gen)
    gen.close()  # must not hang
    with pytest.raises(UserError, match="split 'test'"):
        next(iter_dataset(tfds_dir, split="test"))


def test_missing_feature_names_dataset_key_file(tfds_dir):
    info = open_builder(tfds_dir)
    feats = {**FEATURES, "steps": {**FEATURES["steps"], "extra": "Tensor(2,) float32"}}
    with pytest.raises(UserError, match=r"dataset rlds_tiny_for_test: feature 'steps/extra'.*tfrecord-00000"):
        next(read_episodes(info.splits["train"][0].url, feats, dataset=info.name))


def _write_dataset(root: str, name: str = "ours", shards=((0, 1), (2, 3))) -> str:
    vdir = fs.join(root, name, "1.0.0")
    counts = []
    for i, eps in enumerate(shards):
        url = fs.join(vdir, shard_filename(name, "train", i, len(shards)))
        res = write_shard(url, (_raw_episode(e, LENGTHS[e]) for e in eps), FEATURES)
        assert res.num_episodes == len(eps) and res.num_frames == sum(LENGTHS[e] for e in eps)
        assert res.sha256 == hashlib.sha256(fs.read_bytes(url)).hexdigest()
        counts.append(res.num_episodes)
    write_builder_metadata(vdir, name, "1.0.0", FEATURES, {"train": counts}, description="test data")
    return vdir


def test_our_writer_tfds_reads(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    vdir = _write_dataset(str(tmp_path))
    assert sorted(os.listdir(vdir)) == ["dataset_info.json", "features.json",
                                        "ours-train.tfrecord-00000-of-00002", "ours-train.tfrecord-00001-of-00002"]
    builder = tfds.builder_from_directory(vdir)
    assert builder.info.splits["train"].num_examples == 4
    got = list(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)))
    assert [int(g["episode_metadata"]["episode_id"]) for g in got] == [0, 1, 2, 3]
    for g in got:
        e = int(g["episode_metadata"]["episode_id"])
        assert g["episode_metadata"]["file_path"] == f"/src/{e}.h5".encode()
        assert bool(g["success"]) == (e % 2 == 0)
        steps = list(g["steps"])
        assert len(steps) == LENGTHS[e]
        for t, s in enumerate(steps):
            want = _step_values(e, t)
            np.testing.assert_array_equal(s["action"], want["action"])
            np.testing.assert_array_equal(s["observation"]["state"], want["observation"]["state"])
            np.testing.assert_array_equal(s["observation"]["depth"], want["observation"]["depth"])
            assert s["observation"]["image"].shape == (8, 8, 3)
            np.testing.assert_allclose(s["mat"], want["mat"], rtol=1e-6)
            assert s["language_instruction"] == f"task {e}".encode() and bool(s["is_first"]) == (t == 0)
            assert s["count"] == t and s["reward"] == t
    # and our reader reads our writer's output identically to the tfds-written data
    for ep in iter_dataset(vdir):
        _check_raw(ep, int(ep["episode_metadata"]["episode_id"]))


def test_open_builder_errors(tmp_path):
    _write_dataset(str(tmp_path), name="bridge_orig", shards=((0,),))
    os.makedirs(tmp_path / "bridge_orig" / "0.1.0")  # lower version, no metadata
    assert open_builder(str(tmp_path / "bridge_orig")).version == "1.0.0"
    with pytest.raises(UserError, match="did you mean bridge_orig"):
        open_builder(str(tmp_path / "bridge_orgi"))
    with pytest.raises(UserError, match="dataset directory .* not found"):
        open_builder(str(tmp_path / "nope" / "deeper"))
    os.makedirs(tmp_path / "empty_ds")
    with pytest.raises(UserError, match="dataset_info.json"):
        open_builder(str(tmp_path / "empty_ds"))


def test_writer_is_atomic_and_checks_lengths(tmp_path):
    url = str(tmp_path / "x-train.tfrecord-00000-of-00001")
    bad = _raw_episode(0, 3)
    bad["steps"]["reward"] = bad["steps"]["reward"][:2]
    with pytest.raises(ValueError, match="steps/reward"):
        write_shard(url, [_raw_episode(2, 2), bad], FEATURES)
    assert os.listdir(tmp_path) == []
    missing = _raw_episode(0, 3)
    del missing["episode_metadata"]
    with pytest.raises(UserError, match="episode_metadata/file_path"):
        write_shard(url, [missing], FEATURES)
    assert os.listdir(tmp_path) == []


def test_corrupt_shards(tmp_path):
    vdir = _write_dataset(str(tmp_path), shards=((0, 2, 3),))
    info = open_builder(vdir)
    url = info.splits["train"][0].url
    data = bytearray(fs.read_bytes(url))
    first_len = int.from_bytes(data[:8], "little") + 16
    # flipped byte inside record 1's payload
    flipped = bytearray(data)
    flipped[first_len + 12 + 20] ^= 0xFF
    fs.write_bytes(url, bytes(flipped))
    with pytest.raises(CorruptRecordError) as ei:
        list(read_episodes(url, info.features))
    assert ei.value.index == 1 and url in str(ei.value) and "record 1" in str(ei.value)
    stats = ReadStats()
    eps = list(read_episodes(url, info.features, on_corrupt="skip", stats=stats))
    assert [ep["_source"]["index"] for ep in eps] == [0, 2]
    assert stats.corrupt == 1 and stats.episodes == 2 and "record 1" in stats.errors[0]
    # truncated shard: the last record is cut
    fs.write_bytes(url, bytes(data[:-10]))
    with pytest.raises(CorruptRecordError, match="record 2 .*truncated"):
        list(read_episodes(url, info.features))
    with pytest.raises(CorruptRecordError, match="record 2"):
        list(iter_dataset(vdir, num_workers=2))
    stats = ReadStats()
    eps = list(iter_dataset(vdir, on_corrupt="skip", stats=stats))
    assert len(eps) == 2 and stats.corrupt == 1


def test_gcs_roundtrip(gcs_bucket):
    vdir = _write_dataset(gcs_bucket)
    assert vdir.startswith("gs://")
    info = open_builder(fs.join(gcs_bucket, "ours"))
    assert info.url == vdir and all(s.url.startswith("gs://") for s in info.splits["train"])
    eps = list(iter_dataset(vdir, num_workers=2))
    assert [int(ep["episode_metadata"]["episode_id"]) for ep in eps] == [0, 1, 2, 3]
    for ep in eps:
        _check_raw(ep, int(ep["episode_metadata"]["episode_id"]))
    with pytest.raises(UserError, match="did you mean ours"):
        open_builder(fs.join(gcs_bucket, "our"))


CURATED = {
    "steps": {
        "observation": {"image_primary": "string", "image_secondary": "string", "image_wrist": "string",
                        "proprio": "Tensor(4,) float32"},
        "action": "Tensor(7,) float32", "language_instruction": "Text",
        "is_first": "bool", "is_last": "bool", "is_terminal": "bool",
    },
    "episode_metadata": {"dataset_name": "Text", "episode_id": "Text", "source_file": "Text",
                         "source_index": "Tensor() int64"},
}


def _curated_episode(i: int, T: int) -> dict:
    imgs = np.empty(T, dtype=object)
    imgs[:] = [_encode_image(np.full((4, 4, 3), t, np.uint8), "JPEG") for t in range(T)]
    empty = np.empty(T, dtype=object)
    empty[:] = [b""] * T
    lang = np.empty(T, dtype=object)
    lang[:] = ["pick up the cup"] * T  # str is accepted and written as UTF-8
    return {
        "steps": {"observation": {"image_primary": imgs, "image_secondary": empty, "image_wrist": empty,
                                  "proprio": np.ones((T, 4), np.float32) * i},
                  "action": np.arange(T * 7, dtype=np.float32).reshape(T, 7),
                  "language_instruction": lang, "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1,
                  "is_terminal": np.arange(T) == T - 1},
        "episode_metadata": {"dataset_name": "bridge_orig", "episode_id": f"ep{i}", "source_file": "gs://x/y",
                             "source_index": i},
    }


def test_curated_schema_roundtrip(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    vdir = str(tmp_path / "bridge_orig" / "1.0.0")
    url = fs.join(vdir, shard_filename("bridge_orig", "train", 0, 1))
    res = write_shard(url, [_curated_episode(i, 3 + i) for i in range(3)], CURATED)
    assert res[:2] == (3, 12)
    write_builder_metadata(vdir, "bridge_orig", "1.0.0", CURATED, {"train": [3]})
    assert int(fs.read_json(fs.join(vdir, "dataset_info.json"))["splits"][0]["numBytes"]) == os.path.getsize(url)
    got = list(tfds.as_numpy(tfds.builder_from_directory(vdir).as_dataset(split="train")))
    assert sorted(g["episode_metadata"]["episode_id"] for g in got) == [b"ep0", b"ep1", b"ep2"]
    ours = list(read_episodes(url, open_builder(vdir).features))
    for i, ep in enumerate(ours):
        s = ep["steps"]
        assert s["observation"]["image_wrist"].tolist() == [b""] * (3 + i)
        assert s["observation"]["image_primary"][0].startswith(b"\xff\xd8")
        assert s["language_instruction"][0] == b"pick up the cup"
        assert s["is_last"].tolist() == [False] * (2 + i) + [True]
        s["action"][0, 0] = 5.0  # arrays are writeable
        assert ep["episode_metadata"]["source_index"] == i and ep["episode_metadata"]["dataset_name"] == b"bridge_orig"


def test_writer_encodes_decoded_tensors_and_checks_shapes(tmp_path):
    feats = {"steps": {"a": "Tensor(3,) float32 zlib", "f": "Tensor(2,) float32"}}
    url = str(tmp_path / "z-train.tfrecord-00000-of-00001")
    ep = {"steps": {"a": np.ones((2, 3), np.float32), "f": np.array([[1, 2], [3, 4]])}}  # ints for a float spec
    write_shard(url, [ep], feats)
    (got,) = read_episodes(url, feats)
    assert got["steps"]["f"].dtype == np.float32 and got["steps"]["f"].tolist() == [[1, 2], [3, 4]]
    np.testing.assert_array_equal(decode_tensor(got["steps"]["a"][1], parse_type_string("Tensor(3,) float32 zlib")),
                                  np.ones(3))
    with pytest.raises(ValueError, match="'steps/f' has 6 values"):
        write_shard(url, [{"steps": {"a": ep["steps"]["a"], "f": np.zeros((2, 3))}}], feats)
    with pytest.raises(UserError, match="ragged"):
        write_shard(url, [ep], {"steps": {"a": "Tensor(None,) float32"}})


def test_read_and_write_path_do_not_import_tensorflow(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from pipeline.data.io.rlds_reader import read_episodes\n"
        "from pipeline.data.io.rlds_writer import write_shard\n"
        f"url = {str(tmp_path / 'n-train.tfrecord-00000-of-00001')!r}\n"
        "feats = {'steps': {'a': 'Tensor(2,) float32', 'img': 'Image(4,4,3) uint8 jpeg'}, 'm': 'Text'}\n"
        "ep = {'steps': {'a': np.zeros((3, 2)), 'img': [b'x'] * 3}, 'm': 'hi'}\n"
        "write_shard(url, [ep], feats)\n"
        "(got,) = read_episodes(url, feats)\n"
        "assert got['steps']['a'].shape == (3, 2) and got['m'] == b'hi'\n"
        "heavy = [m for m in ('tensorflow', 'tensorflow_datasets', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_spec_mismatch_is_a_user_error(tmp_path):
    url = str(tmp_path / "m-train.tfrecord-00000-of-00001")
    write_shard(url, [{"steps": {"a": np.zeros((2, 3), np.float32)}}], {"steps": {"a": "Tensor(3,) float32"}})
    with pytest.raises(UserError, match="'steps/a' is stored as numbers"):
        list(read_episodes(url, {"steps": {"a": "Image(4,4,3) uint8 jpeg"}}))
    with pytest.raises(UserError, match="'steps/a' has 6 values"):
        list(read_episodes(url, {"steps": {"a": "Tensor(4,) float32"}}))


def test_keys_containing_slash_stay_single_keys(tmp_path):
    """kuka-style keys ("clip_function_input/workspace_bounds") nest exactly as in features.json."""
    tfds = pytest.importorskip("tensorflow_datasets")
    feats = {"steps": {"observation": {"clip_function_input/workspace_bounds": "Tensor(3,3) float32"},
                       "is_first": "bool"}}
    vdir = str(tmp_path / "kuka" / "1.0.0")
    url = fs.join(vdir, shard_filename("kuka", "train", 0, 1))
    ep = {"steps": {"observation": {"clip_function_input/workspace_bounds": np.ones((2, 3, 3), np.float32)},
                    "is_first": np.array([True, False])}}
    write_shard(url, [ep], feats)
    write_builder_metadata(vdir, "kuka", "1.0.0", feats, {"train": [1]})
    info = open_builder(vdir)
    (got,) = read_episodes(url, info.features)
    assert got["steps"]["observation"]["clip_function_input/workspace_bounds"].shape == (2, 3, 3)
    (tf_ep,) = tfds.as_numpy(tfds.builder_from_directory(vdir).as_dataset(split="train"))
    (step0, _) = list(tf_ep["steps"])
    np.testing.assert_array_equal(step0["observation"]["clip_function_input/workspace_bounds"], np.ones((3, 3)))
