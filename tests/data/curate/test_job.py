"""``vla curate`` on real fixture data with a real local Ray session (one per module).

Covers: curated schema readable by tfds (train and val splits), OpenVLA's split rule, shuffled +
deterministic shards, statistics and the stream's action token ids equal to a by-hand numpy
computation over split "all" of the source, quarantine counts by reason, gs:// in and out, user
errors before any work, and a run killed with SIGKILL then re-run ending identical to an
uninterrupted run.
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

# bridge_orig: train + val (OpenVLA trains on all of train); fractal: train only (train[:95%] /
# train[95%:]); taco_play: train + test (95% split; test only in the statistics)
DATASETS = ("bridge_orig", "fractal20220817_data", "taco_play")
QS = np.array([0.01, 0.99])


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    from pipeline.data.fixtures.datasets import FixtureConfig, run_fixture

    root = str(tmp_path_factory.mktemp("raw"))
    run_fixture(load_config(FixtureConfig, [f"out={root}", f"datasets=[{','.join(DATASETS)}]", "episodes=26",
                                            "shards=3", "steps=4-8", "image_size=32", "seed=0"]))
    return root


def _cfg(source: str, out: str, *extra: str) -> CurateConfig:
    return load_config(CurateConfig, ["mixture=demo", f"source={source}", f"out={out}", "progress=false", *extra])


def _episodes(out: str, name: str, split: str = "train") -> list[dict]:
    from pipeline.data.io.rlds_reader import read_episodes

    dataset = CuratedDataset(out, name)
    features = curated_features(dataset.manifest()["proprio_dim"])
    if not dataset.counts(split)[1]:
        return []
    return [ep for url, _ in dataset.shards(split) for ep in read_episodes(url, features)]


def _ids(eps: list[dict]) -> list[str]:
    return [e["episode_metadata"]["episode_id"].decode() for e in eps]


def _where(ep: dict) -> tuple[str, int]:
    meta = ep["episode_metadata"]
    return fs.basename(meta["source_file"].decode()), int(meta["source_index"])


def by_hand(raw: str, name: str) -> dict:
    """OpenVLA's reading of one source dataset, written out with numpy: statistics over every split
    (standardized, before filters), training on train (source has "val") or the first
    round(0.95 n) episodes of train, validating on val or the rest, dropping unlabeled episodes."""
    from pipeline.data.io.builder import open_builder
    from pipeline.data.io.rlds_reader import read_episodes
    from pipeline.data.oxe import get_spec

    spec, source = get_spec(name), open_builder(fs.join(raw, name))
    actions, proprios, out = [], [], {"train": [], "val": [], "test": 0, "unlabeled": 0, "frames": {}}
    boundary = len([1 for s in source.splits["train"] for _ in range(s.num_episodes)]) * 95 / 100.0
    boundary = int(round(boundary))  # tfds "closest": Python's round half to even
    for split, shards in source.splits.items():
        position = 0
        for shard in shards:
            for raw_ep in read_episodes(shard.url, source.features):
                ep = spec.standardize(raw_ep)
                actions.append(ep["steps"]["action"])
                proprios.append(ep["steps"]["proprio"])
                where = (fs.basename(shard.url), raw_ep["_source"]["index"])
                out["frames"][where] = ep["steps"]["action"]
                role = {"val": "val", "test": "test"}.get(split) if split != "train" else (
                    "train" if "val" in source.splits or position < boundary else "val")
                position += 1
                if role == "test":
                    out["test"] += 1
                elif not any(ep["steps"]["language_instruction"]):
                    out["unlabeled"] += 1
                else:
                    out[role].append(where)
    action, proprio = np.concatenate(actions), np.concatenate(proprios)
    out["stats"] = {"q": np.quantile(action, QS, axis=0), "min": action.min(0), "max": action.max(0),
                    "mean": action.astype(np.float64).mean(0), "pq": np.quantile(proprio, QS, axis=0),
                    "pstd": proprio.astype(np.float64).std(0), "n": len(action), "episodes": len(actions)}
    return out


@pytest.fixture(scope="module")
def curated(ray_session, raw, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("curated"))
    results = curate(_cfg(raw, out))
    assert [r["status"] for r in results] == ["curated"] * 3
    return out


def test_split_rule_by_hand():
    from pipeline.data.curate.splits import STATS_ONLY, TRAIN, VAL, split_roles, train_boundary

    # tfds "closest": 95% of 10 = 9.5 -> 10 (half to even: validation empty); 28.5 -> 28; 47.5 -> 48; 22.8 -> 23
    assert [train_boundary(n) for n in (10, 11, 20, 24, 30, 50)] == [10, 10, 19, 23, 28, 48]
    roles = split_roles({"train": [12, 12], "test": [2]})
    assert [r.role for r in roles["train"]] == [TRAIN, None] and roles["test"][0].role == STATS_ONLY
    assert [roles["train"][1].of(k) for k in (10, 11)] == [TRAIN, VAL]  # episode 23 of 24 validates
    roles = split_roles({"train": [5, 5], "val": [1]})
    assert {r.role for r in roles["train"]} == {TRAIN} and roles["val"][0].role == VAL


@pytest.mark.slow
def test_output_layout_splits_stats_and_shuffle(curated, raw):
    import tensorflow_datasets as tfds

    for name in DATASETS:
        dataset = CuratedDataset(curated, name)
        manifest = fs.read_json(dataset.file(MANIFEST_NAME))
        for f in ("dataset_statistics.json", "quarantine.json", "dataset_info.json", "features.json"):
            assert fs.exists(dataset.file(f)), f
        assert not fs.exists(dataset.file("_parts"))
        hand = by_hand(raw, name)
        train, val = _episodes(curated, name, "train"), _episodes(curated, name, "val")
        assert sorted(map(_where, train)) == sorted(hand["train"]) and len(hand["train"]) > 10
        assert [_where(e) for e in train] != sorted(hand["train"])  # shuffled
        assert sorted(map(_where, val)) == sorted(hand["val"]) and len(hand["val"]) >= 1
        assert manifest["total_episodes"] == len(train) and manifest["validation"]["total_episodes"] == len(val)
        counts = [s["episodes"] for s in manifest["shards"]]
        assert max(counts) - min(counts) <= 1 and len(counts) == 3  # equal-sized shards
        for ep in train + val:  # the curated actions are the standardized source actions
            np.testing.assert_array_equal(ep["steps"]["action"], hand["frames"][_where(ep)])
        q = fs.read_json(dataset.file("quarantine.json"))
        assert q["reasons"].get("empty_instruction", {}).get("episodes", 0) == hand["unlabeled"]
        assert q["episodes_held_out"] == hand["test"] == (3 if name == "taco_play" else 0)
        # statistics: numpy over split "all" of the standardized source, before filters: exact
        stats, h = dataset.statistics()[name], hand["stats"]
        np.testing.assert_array_equal([stats["action"]["q01"], stats["action"]["q99"]], h["q"])
        np.testing.assert_array_equal([stats["proprio"]["q01"], stats["proprio"]["q99"]], h["pq"])
        np.testing.assert_array_equal(stats["action"]["min"], h["min"])
        np.testing.assert_array_equal(stats["action"]["max"], h["max"])
        np.testing.assert_allclose(stats["action"]["mean"], h["mean"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(stats["proprio"]["std"], h["pstd"], rtol=1e-9, atol=1e-12)
        assert (stats["num_transitions"], stats["num_trajectories"]) == (h["n"], h["episodes"])
        assert stats["num_transitions"] > manifest["total_frames"] + manifest["validation"]["total_frames"]
        assert stats["action"]["mask"] == [True] * 6 + [False]
        # the curated train frames alone give other quantiles (what OpenVLA does not do)
        kept = np.concatenate([e["steps"]["action"] for e in train])
        assert not np.array_equal(np.quantile(kept, QS, axis=0), h["q"])
        builder = tfds.builder_from_directory(dataset.url)
        assert sum(1 for _ in builder.as_dataset(split="val")) == len(val)
        assert sum(1 for _ in builder.as_dataset(split="train")) == CuratedDataset(curated, name).counts()[1]


def _by_hand_tokens(action: np.ndarray, stats: dict, vocab: int) -> np.ndarray:
    """OpenVLA's normalization (float32, its order of operations) and tokenization, written out."""
    a = stats["action"]
    q01, q99 = np.asarray(a["q01"], np.float64), np.asarray(a["q99"], np.float64)
    x = np.asarray(action, np.float32)
    y = np.float32(2) * (x - q01.astype(np.float32)) / (q99 - q01 + 1e-8).astype(np.float32) - np.float32(1)
    y = np.where(a["mask"], np.clip(y, -1, 1), x)
    y = np.where(np.asarray(a["min"]) == np.asarray(a["max"]), np.float32(0), y)
    return vocab - np.digitize(np.clip(y, -1, 1), np.linspace(-1, 1, 256))


def test_stream_tokens_equal_by_hand(curated, raw):
    """Every action token id the training stream emits equals OpenVLA's, computed by hand from the
    source over split "all"; statistics of the curated train frames alone would change some."""
    from pipeline.data.mixture.files import load_mixture
    from pipeline.data.stream.training_stream import StreamConfig, TrainingStream
    from pipeline.model import ActionPromptBuilder
    from pipeline.train.config import TrainConfig
    from pipeline.train.main import build_tokenizer

    hands = {name: by_hand(raw, name) for name in DATASETS}
    frames = {name: {_ids([e])[0]: e["steps"]["action"] for e in _episodes(curated, name)} for name in DATASETS}
    builder = ActionPromptBuilder(build_tokenizer(TrainConfig()))
    vocab = builder.action_tokenizer.base_vocab_size
    cfg = StreamConfig(num_workers=0, buffer_bytes=2**20)
    checked, differ = 0, 0
    with TrainingStream(cfg, data_root=curated, batch_size=16, seed=0, resolution=16, rank=0, world_size=1,
                        prompt_builder=builder, mixture=load_mixture("demo")) as stream:
        for _ in range(stream.epoch_length() // 16):
            batch = next(stream)
            for labels, (name, episode_id, frame) in zip(batch["labels"].numpy(), batch["meta"]):
                ids = labels[labels != -100][:7]
                action = frames[name][episode_id][frame]
                stats = {"action": {"q01": hands[name]["stats"]["q"][0], "q99": hands[name]["stats"]["q"][1],
                                    "min": hands[name]["stats"]["min"], "max": hands[name]["stats"]["max"],
                                    "mask": [True] * 6 + [False]}}
                np.testing.assert_array_equal(ids, _by_hand_tokens(action, stats, vocab))
                train_only = np.concatenate(list(frames[name].values()))
                stats["action"].update(q01=np.quantile(train_only, 0.01, axis=0), q99=np.quantile(train_only, 0.99, axis=0))
                differ += int(not np.array_equal(ids, _by_hand_tokens(action, stats, vocab)))
                checked += 1
    assert checked > 300 and differ > 0


def test_shares_weight_num_transitions_of_split_all(curated, raw, capsys):
    """As OpenVLA's interleave (balance_weights): the stream's shares are weight x num_transitions over
    split "all" of the source (val, test, unlabeled episodes included), counted by hand; the epoch
    draws the curated training frames; `vla mixture show` prints the stream's own draws."""
    import json

    from pipeline import cli
    from pipeline.data.mixture.files import load_mixture
    from pipeline.data.stream.training_stream import StreamConfig, TrainingStream

    mixture = load_mixture("demo")
    transitions = [by_hand(raw, name)["stats"]["n"] for name in DATASETS]
    sized = [mixture.datasets[name] * n for name, n in zip(DATASETS, transitions)]
    frames = [CuratedDataset(curated, name).counts()[0] for name in DATASETS]
    assert all(t > n for t, n in zip(transitions, frames))
    cfg = StreamConfig(num_workers=0, buffer_bytes=2**20)
    with TrainingStream(cfg, data_root=curated, batch_size=4, seed=0, resolution=16, rank=0, world_size=1,
                        prompt_builder=lambda s: s, pad_id=0, mixture=mixture) as stream:
        np.testing.assert_allclose(stream.shares, np.array(sized) / sum(sized), rtol=1e-12)
        assert stream.epoch_length() == sum(frames)
        counts = stream.counts.tolist()
    assert cli.main(["mixture", "show", "demo", f"curated={curated}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["draws_per_epoch"] for r in report["datasets"]] == counts
    assert [r["num_transitions"] for r in report["datasets"]] == transitions


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
        assert CuratedDataset(other, name).statistics() == CuratedDataset(curated, name).statistics()


def test_kuka_failures_before_statistics_droid_idle_after(ray_session, tmp_path):
    """kuka: success == false episodes never count (OpenVLA's copy is success-filtered offline);
    DROID: idle frames count in the statistics, then go: normalized with those statistics they sit
    on DROID's hard-coded normalized zero (the fixture's velocities use DROID's percentiles)."""
    from pipeline.data.fixtures.datasets import FixtureConfig, run_fixture
    from pipeline.data.io.builder import open_builder
    from pipeline.data.io.rlds_reader import read_episodes
    from pipeline.data.oxe import get_spec

    raw = str(tmp_path / "raw")
    run_fixture(load_config(FixtureConfig, [f"out={raw}", "datasets=[kuka,droid]", "episodes=12", "shards=2",
                                            "steps=5-7", "image_size=16", "seed=0"]))
    mix = tmp_path / "kd.yaml"
    mix.write_text("name: kd\ndatasets:\n  kuka: 1.0\n  droid: 1.0\n")
    out = str(tmp_path / "out")
    curate(load_config(CurateConfig, [f"mixture={mix}", f"source={raw}", f"out={out}", "progress=false"]))
    hand = {}
    for name in ("kuka", "droid"):
        spec, source = get_spec(name), open_builder(fs.join(raw, name))
        eps = [e for s in source.splits["train"] for e in read_episodes(s.url, source.features)]
        ok = [spec.standardize(e) for e in eps if name != "kuka" or e["success"]]
        hand[name] = {"read": len(eps), "counted": ok, "action": np.concatenate([e["steps"]["action"] for e in ok])}
    kuka = CuratedDataset(out, "kuka").statistics()["kuka"]
    assert 0 < len(hand["kuka"]["counted"]) < hand["kuka"]["read"]
    assert kuka["num_trajectories"] == len(hand["kuka"]["counted"])
    # (an array q keeps numpy 2 on OpenVLA's float64 path; a float q would work in float32, see quantiles.py)
    np.testing.assert_array_equal([kuka["action"]["q01"], kuka["action"]["q99"]],
                                  np.quantile(hand["kuka"]["action"], QS, axis=0))
    droid = CuratedDataset(out, "droid")
    action = hand["droid"]["action"]
    assert droid.statistics()["droid"]["num_transitions"] == len(action)  # idle frames included
    idle = ~np.any(action[:, :6] != 0, axis=1)
    curated = np.concatenate([e["steps"]["action"] for e in _episodes(out, "droid") + _episodes(out, "droid", "val")])
    assert idle.sum() >= 12 and not np.any(np.all(curated[:, :6] == 0, axis=1))
    q = fs.read_json(droid.file("quarantine.json"))
    labeled = [e for e in hand["droid"]["counted"] if any(e["steps"]["language_instruction"])]
    idle_labeled = sum(int(np.all(e["steps"]["action"][:, :6] == 0, axis=1).sum()) for e in labeled)
    assert q["reasons"]["droid_idle"]["frames"] == idle_labeled and q["reasons"]["droid_idle"]["episodes"] == 0
    assert len(curated) == sum(len(e["steps"]["action"]) for e in labeled) - idle_labeled


def _make_faulty(raw: str, root: str) -> None:
    """A bridge_orig copy of 10 labeled train episodes (no val split: train[:95%] = all 10, 9.5 rounds
    to even) with one fault per reason (written with the RLDS writer)."""
    from pipeline.data.io.builder import open_builder, shard_filename
    from pipeline.data.io.rlds_reader import read_episodes
    from pipeline.data.io.rlds_writer import write_builder_metadata, write_shard

    src = open_builder(fs.join(raw, "bridge_orig"))
    out_dir = fs.join(root, "bridge_orig", src.version)
    eps = [e for s in src.splits["train"] for e in read_episodes(s.url, src.features)
           if any(e["steps"]["language_instruction"])][:10]
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
    assert q["episodes_kept"] == result["manifest"]["total_episodes"] == n - 5 == 5
    assert result["manifest"]["validation"]["total_episodes"] == 0
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
