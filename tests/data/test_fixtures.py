"""Fixture datasets: TFDS-readable, same layout as the real datasets, learnable, deterministic."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import fs
from pipeline.cli import main
from pipeline.data import fixtures as fx
from pipeline.data import rlds, schema
from pipeline.data import scene as sc
from pipeline.data.features import parse_type_tree, to_type_tree
from pipeline.data.oxe import get_spec, list_datasets

MAGIC = list_datasets(mixture_only=True)
FACTS = Path(__file__).parents[2].parent / "shared" / "oxe" / "datasets.yaml"


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    """`vla fixture datasets=all episodes=2` once for the module."""
    out = tmp_path_factory.mktemp("fixtures")
    assert main(["fixture", f"out={out}", "datasets=[all]", "episodes=2", "steps=8-10"]) == 0
    return out


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))


# ------------------------------------------------------------------------- layout (TFDS, registry)


def _tfds_leaf(feature) -> str:
    """Type string of one tfds leaf feature, written from the tfds objects (not our parser)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    dtype = np.dtype(feature.np_dtype).name if feature.np_dtype is not np.object_ else "string"
    shape = ",".join(str(d) for d in feature.shape) + ("," if len(feature.shape) == 1 else "")
    if isinstance(feature, f.Image):
        return f"Image({shape}) {dtype} {feature._encoding_format or 'unspecified'}"
    if isinstance(feature, f.Text):
        return "Text"
    if isinstance(feature, f.Scalar):
        return f"Scalar {dtype}"
    enc = {f.Encoding.NONE: "", f.Encoding.ZLIB: " zlib", f.Encoding.BYTES: " bytes"}[feature._encoding]
    dtype = "string" if feature.dtype == "string" or str(feature.dtype) == "<dtype: 'string'>" else dtype
    if feature.shape == () and not enc and dtype in ("bool", "string"):
        return dtype
    return f"Tensor({shape}) {dtype}{enc}"


def _tfds_tree(feature) -> dict | str:
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.Dataset):
        return _tfds_tree(feature.feature)
    if isinstance(feature, tfds.features.FeaturesDict):
        return {k: _tfds_tree(v) for k, v in feature.items()}
    return _tfds_leaf(feature)


def test_all_27_read_back_by_tfds_with_registry_layout(fixture_root):
    import tensorflow_datasets as tfds

    assert len(MAGIC) == 27
    for name in MAGIC:
        spec = get_spec(name)
        builder = tfds.builder_from_directory(str(fixture_root / name / spec.version))
        assert str(builder.info.version) == spec.version
        assert set(builder.info.splits) == set(spec.splits), name
        assert builder.info.splits[list(spec.splits)[0]].num_examples >= 1
        expected = to_type_tree(parse_type_tree(spec.features))
        assert _tfds_tree(builder.info.features) == expected, name


@pytest.mark.parametrize("name", ["bridge_orig", "kuka", "language_table", "berkeley_autolab_ur5", "fmb_dataset"])
def test_tfds_decodes_episode(fixture_root, name):
    import tensorflow_datasets as tfds

    spec = get_spec(name)
    builder = tfds.builder_from_directory(str(fixture_root / name / spec.version))
    ep = next(iter(tfds.as_numpy(builder.as_dataset(split="train").take(1))))
    steps = list(ep["steps"])
    assert len(steps) >= 8
    image = steps[0]["observation"][spec.cameras["primary"]]
    assert image.dtype == np.uint8 and image.shape[-1] == 3


def _facts_leaf(text: str) -> tuple:
    """(kind, shape, dtype, format|encoding) of a facts-file type string (independent parser)."""
    text = text.strip()
    if text in ("Text", "string"):
        return ("str",)
    if text == "bool":
        return ("tensor", (), "bool", "")
    m = re.match(r"Scalar (\w+)", text)
    if m:
        return ("tensor", (), m.group(1), "")
    m = re.match(r"(Image|Tensor)\(([\d, ]*)\) (\w+)(?: (jpeg|png|unspecified))?", text)
    assert m, text
    shape = tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d)
    extra = m.group(4) or ("zlib" if "zlib" in text else "")
    return (m.group(1).lower(), shape, m.group(3), extra)


def _facts_expected(entry: dict) -> dict[str, tuple]:
    """Flat {path: leaf} of a facts entry: features with the openvla_copy overrides applied."""
    feats = entry["features"]
    out: dict[str, tuple] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            elif value != "absent":
                out[f"{prefix}{key}"] = _facts_leaf(value)

    if isinstance(feats.get("episode_level"), dict):
        walk(feats["episode_level"], "")
    if isinstance(feats.get("episode_metadata"), dict):
        walk(feats["episode_metadata"], "episode_metadata/")
    walk(feats["steps"], "steps/")
    copy = feats.get("openvla_copy")
    if isinstance(copy, dict):
        for key, value in copy.items():
            if key != "filter":
                out[f"steps/observation/{key}"] = _facts_leaf(value.split(" (")[0])
    return out


def _registry_flat(tree: dict, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_registry_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = _facts_leaf(value)
    return out


@pytest.mark.skipif(not FACTS.exists(), reason=f"{FACTS} not present")
@pytest.mark.parametrize("name", ["fractal20220817_data", "kuka", "bridge_orig", "taco_play",
                                  "berkeley_autolab_ur5", "language_table", "fmb_dataset", "droid"])
def test_written_layout_matches_facts_file(fixture_root, name):
    import tensorflow_datasets as tfds

    entry = yaml.safe_load(FACTS.read_text())["datasets"][name]
    expected = _facts_expected(entry)
    spec = get_spec(name)
    assert spec.version == entry["tfds_version"]
    builder = tfds.builder_from_directory(str(fixture_root / name / spec.version))
    written = _registry_flat(_tfds_tree(builder.info.features))
    if name == "bridge_orig":  # facts: catalog-only key, unverified for the Berkeley copy
        expected.pop("episode_metadata/episode_id", None)
        written.pop("episode_metadata/episode_id", None)
    assert written == expected


# ------------------------------------------------------------------- content (registry round trip)


@pytest.mark.parametrize("name", MAGIC)
def test_standardize_reproduces_plan(name):
    spec = get_spec(name)
    raw, plan = fx.generate_episode(spec, np.random.default_rng(3), num_steps=10)
    ep = spec.standardize(raw)
    assert schema.validate_episode(ep) == []
    action = ep["steps"]["action"]
    assert len(action) == len(plan["action"])
    dims = [d for d in range(7) if d not in spec.constant_action_dims]
    np.testing.assert_allclose(action[:, dims], plan["action"][:, dims], atol=2e-5, err_msg=name)
    assert set(ep["steps"]["language_instruction"]) == {plan["instruction"]}


def test_read_back_through_rlds_reader(fixture_root):
    for name in MAGIC:
        spec = get_spec(name)
        info = rlds.open_builder(str(fixture_root / name))
        episodes = [ep for shards in info.splits.values() for shard in shards
                    for ep in rlds.read_episodes(shard.url, info.features, dataset=name)]
        assert len(episodes) == 2, name
        ids = set()
        for raw in episodes:
            ep = spec.standardize(raw)
            assert schema.validate_episode(ep) == [], name
            ids.add(ep["episode_id"])
        assert len(ids) == 2, f"{name}: episode ids not unique: {ids}"


@pytest.mark.parametrize("name", ["bridge_orig", "droid", "taco_play", "kuka", "dobbe", "language_table"])
def test_action_is_a_function_of_the_primary_image(name):
    """Whatever raw camera lands in the primary slot (DROID swaps its two exterior cameras for half
    the episodes: ids 0 and 2 fall on different sides), it shows the labelled view."""
    spec = get_spec(name)
    dims = [d for d in range(7) if d not in spec.constant_action_dims]
    for index in range(3):
        raw, plan = fx.generate_episode(spec, np.random.default_rng(index), num_steps=12, index=index)
        ep = spec.standardize(raw)
        for t, image in enumerate(ep["steps"]["image_primary"]):
            implied = sc.action_from_image(_decode(image))
            np.testing.assert_allclose(implied[dims], ep["steps"]["action"][t, dims], atol=1e-6)


def test_scene_labels_are_learnable():
    """The labelling rule only needs the effector/target cells, both visible in the image."""
    closed = []
    for seed in range(12):
        scene = sc.plan_scene(np.random.default_rng(seed), 16)
        actions = sc.scene_actions(scene)
        closed += list(actions[:, 6] == 0)
        for t in range(scene.num_steps):
            image = sc.render_rgb(scene, t, 224, 224)
            np.testing.assert_array_equal(sc.action_from_image(image), actions[t])
    assert 0.15 < np.mean(closed) < 0.6  # both gripper classes are well represented


# ----------------------------------------------------------------------------- determinism, config


def _shards(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.tfrecord-*"))}


def test_same_seed_gives_identical_shards(tmp_path):
    kwargs = dict(episodes=3, steps=(8, 12), shards=2)
    for sub, seed in (("a", 5), ("b", 5), ("c", 6)):
        for name in ("bridge_orig", "kuka"):
            fx.write_fixture_dataset(get_spec(name), str(tmp_path / sub), seed=seed, **kwargs)
    a, b, c = (_shards(tmp_path / s) for s in "abc")
    assert len(a) >= 4 and a == b
    assert a.keys() == c.keys() and a != c


def test_split_counts_put_most_in_train():
    assert fx.split_counts({"train": 10, "val": 1}, 4) == {"train": 3, "val": 1}
    assert fx.split_counts({"train": 10, "test": 1}, 2) == {"train": 1, "test": 1}
    assert fx.split_counts({"train": 10, "val": 1}, 1) == {"train": 1, "val": 1}  # no empty split
    assert fx.split_counts({"val": 1, "train": 10}, 30) == {"val": 3, "train": 27}
    assert fx.split_counts({"train": 10}, 4) == {"train": 4}


def test_bad_config_is_one_line_error(capsys, tmp_path):
    assert main(["fixture", f"out={tmp_path}", "datasets=[not_a_dataset]"]) == 2
    assert main(["fixture", f"out={tmp_path}", "steps=9-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err)


def test_image_size_override(tmp_path):
    spec = get_spec("taco_play")
    fx.write_fixture_dataset(spec, str(tmp_path), episodes=1, steps=(8, 8), shards=1, seed=0, image_size=64)
    info = rlds.open_builder(str(tmp_path / "taco_play"))
    assert info.features["steps"].feature["observation"]["rgb_static"].shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------ gs://


def test_gcs_output(gcs_bucket, capsys):
    # seed=2: gcp-storage-emulator 2026.7.19 drops a trailing b"\r" from multipart uploads, and with
    # seeds 0/1 a shard's final CRC byte happens to be 0x0d (real GCS keeps it).
    args = ["datasets=[bridge_orig]", "episodes=2", "steps=8", "seed=2"]
    assert main(["fixture", f"out={gcs_bucket}", *args]) == 0
    capsys.readouterr()
    assert main(["inspect", f"data={gcs_bucket}"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("bridge_orig ")
    info = rlds.open_builder(fs.join(gcs_bucket, "bridge_orig"))
    assert set(info.splits) == {"train", "val"}
    raws = [r for shards in info.splits.values() for s in shards for r in rlds.read_episodes(s.url, info.features)]
    assert len(raws) == 2
    assert schema.validate_episode(get_spec("bridge_orig").standardize(raws[0])) == []
