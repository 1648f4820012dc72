"""tf.train.Example codec, checked against the runtime proto classes and real TensorFlow."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.data.io import example as exm
from pipeline.data.io import tfrecord as tr

FEATURES = {
    "floats": np.array([0.5, -1.25, 3.0e6, np.inf], np.float32),
    "ints": np.array([0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1], np.int64),
    "bools": np.array([True, False, True]),
    "blobs": [b"", b"\x00\xff" * 100, b"jpeg"],
    "text": "h\u00e9llo",
    "empty_f": np.zeros(0, np.float32),
    "empty_b": [],
}


def _check_decoded(d: dict) -> None:
    np.testing.assert_array_equal(d["floats"], FEATURES["floats"])
    assert d["floats"].dtype == np.float32
    np.testing.assert_array_equal(d["ints"], FEATURES["ints"])
    assert d["ints"].dtype == np.int64
    np.testing.assert_array_equal(d["bools"], [1, 0, 1])
    assert d["blobs"] == FEATURES["blobs"]
    assert d["text"] == ["h\u00e9llo".encode()]
    assert d["empty_f"].size == 0 and d["empty_b"] == []


def test_example_codec_matches_runtime_proto_classes():
    data = exm.encode_example(FEATURES)
    msg = exm.Example.FromString(data)
    feats = msg.features.feature
    assert list(feats["ints"].int64_list.value) == FEATURES["ints"].tolist()
    assert list(feats["blobs"].bytes_list.value) == FEATURES["blobs"]
    assert feats["empty_f"].WhichOneof("kind") == "float_list"
    _check_decoded(exm.decode_example(data))
    # and the other way: bytes produced by the protobuf classes decode with ours
    _check_decoded(exm.decode_example(msg.SerializeToString()))


def test_decode_skip_and_unpacked_lists():
    msg = exm.Example()
    msg.features.feature["x"].float_list.value.extend([1.0, 2.0])
    data = msg.SerializeToString()
    assert "x" not in exm.decode_example(data, skip={"x"})
    # unpacked encoding (proto2 writers): field 1, wire type 5 per value
    unpacked = bytes([0x0A, 0x13, 0x0A, 0x11, 0x0A, 0x01]) + b"x" + bytes([0x12, 0x0C, 0x12, 0x0A]) + \
        bytes([0x0D]) + np.float32(1).tobytes() + bytes([0x0D]) + np.float32(2).tobytes()
    np.testing.assert_array_equal(exm.decode_example(unpacked)["x"], [1.0, 2.0])
    with pytest.raises(ValueError):
        exm.decode_example(b"\x0a\x05\x0a")


def test_decode_speed():
    T = 50
    feats = {"steps/observation/image": [b"x" * 8000] * T, "steps/action": np.random.rand(T * 7).astype(np.float32),
             "steps/is_first": np.zeros(T, np.int64), "steps/language_instruction": [b"pick up the cup"] * T}
    data = exm.encode_example(feats)
    n = 300
    t0 = time.perf_counter()
    for _ in range(n):
        exm.decode_example(data)
    rate = n / (time.perf_counter() - t0)
    assert rate > 500, f"decode_example too slow: {rate:.0f} records/s"


@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow")
    return tf


def test_tensorflow_writes_we_read(tf, tmp_path):
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i in range(3):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "floats": tf.train.Feature(float_list=tf.train.FloatList(value=FEATURES["floats"].tolist())),
                "ints": tf.train.Feature(int64_list=tf.train.Int64List(value=FEATURES["ints"].tolist())),
                "bools": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 0, 1])),
                "blobs": tf.train.Feature(bytes_list=tf.train.BytesList(value=FEATURES["blobs"])),
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=["h\u00e9llo".encode()])),
                "empty_f": tf.train.Feature(float_list=tf.train.FloatList(value=[])),
                "empty_b": tf.train.Feature(bytes_list=tf.train.BytesList(value=[])),
                "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
            }))
            w.write(ex.SerializeToString())
    from pipeline import fs

    with fs.open_url(path, "rb") as f:  # any fsspec file object
        records = list(tr.read_records(f))
    assert len(records) == 3
    for i, r in enumerate(records):
        d = exm.decode_example(r)
        _check_decoded(d)
        assert d["i"].tolist() == [i]
        assert exm.Example.FromString(r).features.feature["i"].int64_list.value[0] == i


def test_we_write_tensorflow_reads(tf, tmp_path):
    path = str(tmp_path / "ours.tfrecord")
    with open(path, "wb") as f:
        w = tr.TFRecordWriter(f)
        for i in range(3):
            w.write(exm.encode_example({**FEATURES, "i": np.array([i])}))
        w.close()
    got = [r.numpy() for r in tf.data.TFRecordDataset([path])]
    assert len(got) == 3
    for i, r in enumerate(got):
        ex = tf.train.Example.FromString(r)
        feats = ex.features.feature
        np.testing.assert_array_equal(np.array(feats["floats"].float_list.value, np.float32), FEATURES["floats"])
        assert list(feats["ints"].int64_list.value) == FEATURES["ints"].tolist()
        assert list(feats["blobs"].bytes_list.value) == FEATURES["blobs"]
        assert feats["i"].int64_list.value[0] == i
        assert feats["empty_f"].WhichOneof("kind") == "float_list"
    parsed = tf.io.parse_single_example(got[0], {"floats": tf.io.FixedLenFeature([4], tf.float32),
                                                 "ints": tf.io.FixedLenFeature([8], tf.int64)})
    np.testing.assert_array_equal(parsed["ints"].numpy(), FEATURES["ints"])
