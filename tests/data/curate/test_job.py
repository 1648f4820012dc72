"""``vla curate`` on real fixture data with a real local Ray session (one per module).

Covers: curated schema readable by tfds, shuffled + deterministic shards, statistics equal to numpy
on the curated frames, quarantine counts by reason, gs:// in and out, user errors before any work,
and a run killed with SIGKILL then re-run ending identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

import pipeline  # noqa: F401
from pipeline import fs
from pipeline.config import load_config
from pipeline.data.curate.job import CurateConfig, curate
from pipeline.data.manifest import MANIFEST_NAME, CuratedDataset, curated_features
from pipeline.errors import UserError

DATASETS = ("bridge_orig", "fractal20220817_data", "taco_play")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    from pipeline.data.fixtures.datasets import FixtureConfig, run_fixture

    root = str(tmp_path_factory.mktemp("raw"))
    run_fixture(load_config(FixtureConfig, [f"out={root}", f"datasets=[{','.join(DATASETS)}]", "episodes=10",
                                            "shards=3", "steps=4-8", "image_size=32", "seed=0"]))
    return root


def _cfg(source: str, out: str, *extra: str) -> CurateConfig:
    return load_config(CurateConfig, ["mixture=demo", f"source={source}", f"out={out}", "progress=false", *extra])


def _episodes(out: str, name: str) -> list[dict]:
    from pipeline.data.io.rlds_reader import read_episodes

    manifest = CuratedDataset(out, name).read_manifest()
    features = curated_features(manifest["proprio_dim"])
    eps = []
    for shard in manifest["shards"]:
        eps += list(read_episodes(fs.join(CuratedDataset(out, name).url, shard["file"]), features))
    return eps


def _ids(eps: list[dict]) -> list[str]:
    return [e["episode_metadata"]["episode_id"].decode() for e in eps]


@pytest.fixture(scope="module")
def curated(ray_session, raw, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("curated"))
    results = curate(_cfg(raw, out))
    assert [r["status"] for r in results] == ["curated"] * 3
    return out


@pytest.mark.slow
def test_output_layout_stats_and_shuffle(curated, raw):
    import tensorflow_datasets as tfds

    from pipeline.data.io.builder import open_builder
    from pipeline.data.io.rlds_reader import read_episodes

    for name in DATASETS:
        d = CuratedDataset(curated, name).url
        manifest = fs.read_json(fs.join(d, MANIFEST_NAME))
        for f in ("dataset_statistics.json", "quarantine.json", "dataset_info.json", "features.json"):
            assert fs.exists(fs.join(d, f)), f
        assert not fs.exists(fs.join(d, "_parts"))
        source = open_builder(fs.join(raw, name))
        n_src = source.num_episodes("train")
        eps = _episodes(curated, name)
        assert len(eps) == manifest["total_episodes"] == n_src  # clean fixtures: nothing dropped
        counts = [s["episodes"] for s in manifest["shards"]]
        assert max(counts) - min(counts) <= 1 and len(counts) == 3  # equal-sized shards
        src_order = [(fs.basename(s.url), e["_source"]["index"]) for s in source.splits["train"]
                     for e in read_episodes(s.url, source.features)]
        out_order = [(fs.basename(e["episode_metadata"]["source_file"].decode()),
                      int(e["episode_metadata"]["source_index"])) for e in eps]
        assert sorted(out_order) == src_order and out_order != src_order  # same episodes, shuffled
        # statistics = numpy over the curated frames (exact: below the sketch capacity)
        stats = fs.read_json(fs.join(d, "dataset_statistics.json"))[name]
        action = np.concatenate([e["steps"]["action"] for e in eps])
        proprio = np.concatenate([e["steps"]["observation"]["proprio"] for e in eps])
        assert stats["num_transitions"] == len(action) == manifest["total_frames"]
        assert stats["num_trajectories"] == len(eps)
        np.testing.assert_allclose(stats["action"]["q01"], np.quantile(action, 0.01, axis=0), atol=1e-6)
        np.testing.assert_allclose(stats["action"]["q99"], np.quantile(action, 0.99, axis=0), atol=1e-6)
        np.testing.assert_allclose(stats["action"]["mean"], action.astype(np.float64).mean(0), atol=1e-7)
        np.testing.assert_allclose(stats["proprio"]["std"], proprio.astype(np.float64).std(0), atol=1e-6)
        assert stats["action"]["mask"] == [True] * 6 + [False]
    builder = tfds.builder_from_directory(CuratedDataset(curated, "taco_play").url)
    n = sum(1 for _ in builder.as_dataset(split="train"))
    assert n == CuratedDataset(curated, "taco_play").read_manifest()["total_episodes"]


@pytest.mark.slow
def test_deterministic_seeded_and_reused(curated, raw, tmp_path, capsys):
    from pipeline import cli

    assert cli.main(["curate", "mixture=demo", f"source={raw}", f"out={curated}", "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == 3 and "reason" in printed  # summary + quarantine tables
    other = str(tmp_path / "seed1")
    curate(_cfg(raw, other, "seed=1", "num_shards=2"))
    for name in DATASETS:
        a, b = _episodes(curated, name), _episodes(other, name)
        assert sorted(_ids(a)) == sorted(_ids(b))
        assert _ids(a) != _ids(b)  # another seed, another permutation
        assert len(CuratedDataset(other, name).read_manifest()["shards"]) == 2


def _make_faulty(raw: str, root: str) -> None:
    """A bridge_orig copy with one fault per reason (written with the RLDS writer)."""
    from pipeline.data.io.builder import open_builder, shard_filename
    from pipeline.data.io.rlds_reader import read_episodes
    from pipeline.data.io.rlds_writer import write_builder_metadata, write_shard

    src = open_builder(fs.join(raw, "bridge_orig"))
    out_dir = fs.join(root, "bridge_orig", src.version)
    eps = [e for s in src.splits["train"] for e in read_episodes(s.url, src.features)]
    steps = [e["steps"] for e in eps]
    steps[0]["language_instruction"][:] = b""
    steps[1]["observation"]["state"][2, 0] = np.nan  # bridge actions are relabeled from states
    steps[2]["observation"]["state"][3:, 1] += 1e4
    img = steps[3]["observation"]["image_0"]
    img[:] = [b"\xff\xd8broken"] * len(img)
    for e in eps:
        e.pop("_source")
    halves = [eps[:5], eps[5:]]
    lengths = []
    for i, part in enumerate(halves):
        write_shard(fs.join(out_dir, shard_filename("bridge_orig", "train", i, 2)), part, src.features)
        lengths.append(len(part))
    write_builder_metadata(out_dir, "bridge_orig", src.version, src.features, {"train": lengths})
    shard = fs.get_fs(fs.join(out_dir, "bridge_orig-train.tfrecord-00001-of-00002"))[1]
    with open(shard, "r+b") as f:  # flip a payload byte of the first record -> CRC mismatch
        f.seek(12 + 40)
        byte = f.read(1)
        f.seek(12 + 40)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
def test_quarantine_counts_every_reason(ray_session, raw, tmp_path):
    root = str(tmp_path / "faulty")
    _make_faulty(raw, root)
    mix = tmp_path / "bridge_only.yaml"
    mix.write_text("name: bridge_only\ndatasets:\n  bridge_orig: 1.0\n")
    out = str(tmp_path / "out")
    cfg = load_config(CurateConfig, [f"mixture={mix}", f"source={root}", f"out={out}", "progress=false",
                                     "filters.image_check_frames=2"])
    [result] = curate(cfg)
    q = fs.read_json(fs.join(CuratedDataset(out, "bridge_orig").url, "quarantine.json"))
    reasons = {k: v["episodes"] for k, v in q["reasons"].items()}
    assert reasons == {"empty_instruction": 1, "nan_inf": 1, "action_magnitude": 1, "undecodable_image": 1,
                       "corrupt_record": 1}
    n = q["episodes_read"] + 1  # the corrupt record is not an episode read
    assert q["episodes_kept"] == result["manifest"]["total_episodes"] == n - 5
    example = q["reasons"]["nan_inf"]["examples"][0]
    assert example["source_file"].endswith("-00000-of-00002") and example["source_index"] == 1
    # switching a filter off keeps those episodes (a different config -> recomputed, not reused)
    cfg2 = load_config(CurateConfig, [f"mixture={mix}", f"source={root}", f"out={out}", "progress=false",
                                      "filters.drop_empty_instruction=false", "filters.max_abs_action=0"])
    [result2] = curate(cfg2)
    assert result2["status"] == "curated" and result2["manifest"]["total_episodes"] == n - 3


def test_user_errors_before_any_work(raw, tmp_path):
    mix = tmp_path / "jp.yaml"
    mix.write_text("datasets:\n  bridge_orig: 1.0\n  berkeley_rpt_converted_externally_to_rlds: 1.0\n")
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match="JOINT_POS"):
        curate(load_config(CurateConfig, [f"mixture={mix}", f"source={raw}", f"out={out}"]))
    mix.write_text("datasets:\n  bridge_orig: 1.0\n  jaco_play: 1.0\n")
    with pytest.raises(UserError, match=r"jaco_play.*" + str(raw)):
        curate(load_config(CurateConfig, [f"mixture={mix}", f"source={raw}", f"out={out}"]))
    assert not os.path.exists(out)


@pytest.mark.slow
def test_gcs_source_and_output(ray_session, raw, curated, gcs_bucket):
    filesystem, _ = fs.get_fs(gcs_bucket)
    src = fs.join(gcs_bucket, "raw")
    filesystem.put(raw, fs.get_fs(src)[1], recursive=True)
    out = fs.join(gcs_bucket, "curated")
    curate(_cfg(src, out))
    for name in DATASETS:
        remote, local = CuratedDataset(out, name).read_manifest(), CuratedDataset(curated, name).read_manifest()
        # same permutation and statistics (shard bytes differ: episodes record their source URL)
        assert [s["episodes"] for s in remote["shards"]] == [s["episodes"] for s in local["shards"]]
        assert _ids(_episodes(out, name)) == _ids(_episodes(curated, name))
        assert fs.read_json(fs.join(CuratedDataset(out, name).url, "dataset_statistics.json")) == \
            fs.read_json(fs.join(CuratedDataset(curated, name).url, "dataset_statistics.json"))
        assert not fs.exists(fs.join(CuratedDataset(out, name).url, "_parts"))


@pytest.mark.slow
def test_kill_and_rerun_matches_uninterrupted(ray_session, raw, curated, tmp_path):
    """Killed while the 2nd dataset is mapping (more kill points: tests/faults/suite/curation_kill.py)."""
    from tests.faults.suite.curation_kill import compare_outputs, kill_when, partial_files, start_curate

    out = str(tmp_path / "killed")
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    parts = os.path.join(CuratedDataset(out, DATASETS[1]).url, "_parts")
    try:
        proc = start_curate(["curate", "mixture=demo", f"source={raw}", f"out={out}", "progress=false"], ray_tmp)
        assert kill_when(proc, lambda: os.path.isdir(parts) and any(f.endswith(".json") for f in os.listdir(parts))), \
            "curate finished before it could be killed"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert partial_files(out, DATASETS) == []
    assert CuratedDataset(out, DATASETS[0]).read_manifest() is not None  # the first dataset was committed
    assert CuratedDataset(out, DATASETS[2]).read_manifest() is None  # the last one was not started
    results = curate(_cfg(raw, out))
    assert [r["status"] for r in results] == ["reused", "resumed", "curated"]
    assert compare_outputs(curated, out, DATASETS) == []  # byte-identical, no .tmp/_parts left
