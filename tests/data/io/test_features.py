"""Feature specs: type strings, features.json (as tfds 4.9 writes it), tfds FeaturesDict."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from pipeline.data.io import features as F
from pipeline.data.io.features import FeatureSpec, SequenceSpec
from pipeline.errors import UserError

TYPE_TREE = {
    "steps": {
        "observation": {
            "image": "Image(256,256,3) uint8 jpeg",
            "image_84": "Image(84,84,3) uint8 unspecified",
            "depth": "Image(256,256,1) uint16 png",
            "state": "Tensor(7,) float32",
            "depth_f": "Tensor(256,256) float32",
            "embedding": "Tensor(512,) int32",
        },
        "action": "Tensor(7,) float32 zlib",
        "reward": "Scalar float32",
        "discount": "Tensor() float64",
        "count": "Tensor() int64",
        "language_instruction": "Text",
        "raw": "string",
        "is_first": "bool",
    },
    "episode_metadata": {"file_path": "Text", "episode_id": "Tensor() int64"},
    "success": "bool",
}


@pytest.mark.parametrize("s, spec", [
    ("Image(256,256,3) uint8 jpeg", FeatureSpec("image", (256, 256, 3), "uint8", image_format="jpeg")),
    ("Image(84,84,3) uint8 unspecified", FeatureSpec("image", (84, 84, 3), "uint8", image_format=None)),
    ("Image(256,256,1) uint16 png", FeatureSpec("image", (256, 256, 1), "uint16", image_format="png")),
    ("Tensor(7,) float32", FeatureSpec("tensor", (7,), "float32")),
    ("Tensor(7,) float32 zlib", FeatureSpec("tensor", (7,), "float32", encoding="zlib")),
    ("Tensor() int64", FeatureSpec("tensor", (), "int64")),
    ("Tensor(256,256) float32", FeatureSpec("tensor", (256, 256), "float32")),
    ("Scalar float32", FeatureSpec("scalar", (), "float32")),
    ("Text", FeatureSpec("text", (), "string")),
    ("string", FeatureSpec("tensor", (), "string")),
    ("bool", FeatureSpec("tensor", (), "bool")),
    ("Tensor(8,) float32   # [7 joints, 1 gripper]", FeatureSpec("tensor", (8,), "float32")),
    ("Image(256,256,3) uint8 jpeg (upsampled)", FeatureSpec("image", (256, 256, 3), "uint8", image_format="jpeg")),
    ("Scalar bool (1 closed, 0 open)", FeatureSpec("scalar", (), "bool")),
])
def test_parse_type_string(s, spec):
    assert F.parse_type_string(s) == spec
    assert F.parse_type_string(F.to_type_string(spec)) == spec


@pytest.mark.parametrize("bad", ["Tensor(?) float32", "Tensor(6?) float32", "Tensor() numeric", "Image(8,8,3) uint8",
                                 "Blob", "", "Tensor(7,) float32 gzip"])
def test_bad_type_strings(bad):
    with pytest.raises(UserError):
        F.parse_type_string(bad)


def test_type_tree_and_flatten():
    tree = F.parse_type_tree(TYPE_TREE)
    assert isinstance(tree["steps"], SequenceSpec)
    assert isinstance(tree["episode_metadata"], dict)
    flat = F.flatten_spec(tree)
    assert flat["steps/observation/image"].in_sequence
    assert not flat["episode_metadata/file_path"].in_sequence
    assert list(flat)[0] == "steps/observation/image"
    assert F.to_type_tree(tree) == {**TYPE_TREE}
    with pytest.raises(UserError, match="steps/action"):
        F.parse_type_tree({"steps": {"action": "Tensor(x) float32"}})


def test_decode_tensor():
    arr = np.arange(7, dtype=np.float32)
    spec = F.parse_type_string("Tensor(7,) float32 zlib")
    np.testing.assert_array_equal(F.decode_tensor(zlib.compress(arr.tobytes()), spec), arr)


def test_tfds_roundtrip_through_features_json(tmp_path):
    """type strings -> tfds FeaturesDict -> features.json (written by tfds) -> spec tree."""
    fd = F.to_tfds_features(TYPE_TREE)
    import tensorflow_datasets as tfds

    assert isinstance(fd["steps"], tfds.features.Dataset)
    fd.save_config(str(tmp_path))
    parsed = F.load_features_json(str(tmp_path / "features.json"))
    assert parsed == F.parse_type_tree(TYPE_TREE)
    assert F.to_type_tree(parsed) == TYPE_TREE


def test_parse_features_json_inline():
    obj = {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
           "featuresDict": {"features": {
               "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                         "sequence": {"feature": {"featuresDict": {"features": {
                             "image": {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                                       "image": {"dtype": "uint8", "shape": {"dimensions": ["64", "64", "3"]}}},
                             "a": {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
                                   "tensor": {"dtype": "float32", "encoding": "none",
                                              "shape": {"dimensions": ["7"]}}}}}},
                             "length": "-1"}},
               "label": {"pythonClassName": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
                         "classLabel": {"numClasses": "3"}}}}}
    tree = F.parse_features_json(obj)
    assert tree["steps"] == SequenceSpec({"image": FeatureSpec("image", (64, 64, 3), "uint8"),
                                          "a": FeatureSpec("tensor", (7,), "float32")})
    assert tree["label"] == FeatureSpec("scalar", (), "int64")
    with pytest.raises(UserError, match="unsupported"):
        F.parse_features_json({"featuresDict": {"features": {"x": {"pythonClassName": "Foo", "foo": {}}}}})


def test_missing_features_json(tmp_path):
    with pytest.raises(UserError, match="not found"):
        F.load_features_json(str(tmp_path / "features.json"))


def test_legacy_features_json():
    fd = F.to_tfds_features(TYPE_TREE)
    legacy = fd.to_json()
    assert "type" in legacy and "content" in legacy
    assert F.parse_features_json(legacy) == F.parse_type_tree(TYPE_TREE)
