"""Training stream: rank disjointness/coverage, exact resume, world-size change, workers, gs://, faults."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline import fs
from pipeline.data.fixtures.curated import write_curated_dataset
from pipeline.data.io.errors import CorruptRecordError
from pipeline.data.manifest import MANIFEST_NAME, STATISTICS_NAME, CuratedDataset
from pipeline.data.mixture.files import Mixture
from pipeline.data.stream.normalize import normalize_bounds_q99
from pipeline.data.stream.source import CuratedSource, _curated_episode
from pipeline.data.stream.training_stream import StreamConfig, TrainingStream
from pipeline.errors import UserError

LENGTHS = {"bridge_orig": [5, 6, 7, 8, 4], "fractal20220817_data": [6, 6, 6]}  # 30 + 18 = 48 frames
TOTAL = 48
MIX = Mixture(name="t", datasets={"bridge_orig": 1.0, "fractal20220817_data": 1.0}, balance_by_size=True)


class StubBuilder:
    """Prompt-builder stand-in: ids encode the normalized action, records what it was given."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def __call__(self, sample: dict) -> dict:
        self.seen.append(sample)
        ids = np.concatenate([[1], np.round((np.asarray(sample["action"]) + 1) * 100).astype(np.int64), [2]])
        return {**sample, "input_ids": ids, "labels": ids.copy()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("curated"))
    for i, (name, lengths) in enumerate(LENGTHS.items()):
        write_curated_dataset(root, name, episode_lengths=lengths, shards=2, image_size=20, seed=i)
    return root


@dataclass
class _Run:
    """A stream's config plus the run values TrainingStream takes as arguments."""

    cfg: StreamConfig
    data_root: str
    batch_size: int
    seed: int
    resolution: int = 8

    @property
    def index_cache_dir(self) -> str:
        return self.cfg.index_cache_dir

    def args(self) -> dict:
        return dict(data_root=self.data_root, batch_size=self.batch_size, seed=self.seed, resolution=self.resolution)


def _cfg(root: str, tmp: str, batch_size: int = 2, seed: int = 5, **kw) -> _Run:
    base = dict(num_workers=0, index_cache_dir=os.path.join(tmp, "index"), buffer_bytes=2**20)
    base.update(kw)
    return _Run(StreamConfig(**base), root, batch_size, seed)


def _stream(cfg: _Run, rank: int = 0, world: int = 1, mixture: Mixture = MIX) -> TrainingStream:
    return TrainingStream(cfg.cfg, **cfg.args(), rank=rank, world_size=world, prompt_builder=StubBuilder(), pad_id=0,
                          mixture=mixture)


def _all_frames() -> set:
    return {(n, f"{n}-{e:05d}", f) for n, ls in LENGTHS.items() for e, t in enumerate(ls) for f in range(t)}


def _take(stream: TrainingStream, n: int) -> list[dict]:
    return [next(stream) for _ in range(n)]


def _same(a: dict, b: dict) -> None:
    assert a["meta"] == b["meta"]
    for key in ("pixel_values", "input_ids", "attention_mask", "labels", "dataset_index"):
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_disjoint_and_cover_epoch(data_root, tmp_path, world):
    cfg = _cfg(data_root, str(tmp_path))
    steps = TOTAL // (world * cfg.batch_size)
    metas = []
    for rank in range(world):
        with _stream(cfg, rank, world) as s:
            for batch in _take(s, steps):
                metas += batch["meta"]
                assert batch["pixel_values"].shape == (2, 3, 8, 8)
            assert s.state_dict()["position"] == TOTAL
    assert len(metas) == TOTAL and set(metas) == _all_frames()


def test_batch_contract_and_normalized_actions(data_root, tmp_path):
    with _stream(_cfg(data_root, str(tmp_path))) as s:
        batch = next(s)
        seen = s._builder.seen
        src = s._sources[0]
        raw = src.read_episode(0, ["primary"]).action
        assert batch["pixel_values"].dtype == torch.float32 and 0 <= batch["pixel_values"].min() <= 1
        assert batch["input_ids"].dtype == torch.int64 and batch["attention_mask"].dtype == torch.bool
        assert batch["dataset_index"].tolist() == [s.dataset_names.index(m[0]) for m in batch["meta"]]
        for sample in seen:
            name, ep_id, frame = sample["meta"]
            source = s._sources[s.dataset_names.index(name)]
            ep = source.read_episode(int(ep_id.rsplit("-", 1)[1]), ["primary"])
            want = normalize_bounds_q99(ep.action[frame], source.norm.action)
            np.testing.assert_allclose(sample["action"], want)
            assert abs(float(sample["action"][6]) - float(ep.action[frame][6])) < 1e-6  # gripper unmasked
        assert raw.shape[1] == 7


def test_exact_resume_at_cut_points(data_root, tmp_path):
    cfg = _cfg(data_root, str(tmp_path), batch_size=4, augment=True)  # 12 batches per epoch
    with _stream(cfg) as s:
        ref = _take(s, 28)
        structure = set(s.state_dict())
    for cut in [*range(14), 24]:  # every step of the first epoch, across its boundary, mid second epoch
        with _stream(cfg) as first:
            _take(first, cut)
            state = first.state_dict()
        assert set(state) == structure
        with _stream(cfg) as resumed:
            resumed.load_state_dict(state)
            for i, batch in enumerate(_take(resumed, 28 - cut)):
                _same(batch, ref[cut + i])


@pytest.mark.parametrize("workers,prefetch", [(0, 4), (1, 1)])  # (1, 1): ring slots of dropped batches reused
def test_state_is_restored_mid_iteration_same_object(data_root, tmp_path, workers, prefetch):
    cfg = _cfg(data_root, str(tmp_path), batch_size=4, num_workers=workers, prefetch_batches=prefetch)
    with _stream(cfg) as s:
        _take(s, 3)
        state = s.state_dict()
        after = _take(s, 4)
        s.load_state_dict(state)  # drops prefetched batches
        for a, b in zip(after, _take(s, 4)):
            _same(a, b)


@pytest.mark.parametrize("w1,w2,steps1", [(2, 1, 3), (1, 2, 6), (2, 3, 3)])
def test_world_size_change_keeps_each_frame_once(data_root, tmp_path, w1, w2, steps1):
    cfg = _cfg(data_root, str(tmp_path))
    metas, states = [], []
    for rank in range(w1):
        with _stream(cfg, rank, w1) as s:
            for batch in _take(s, steps1):
                metas += batch["meta"]
            states.append(s.state_dict())
    assert len({(st["epoch"], st["position"]) for st in states}) == 1
    position = states[0]["position"]
    steps2 = (TOTAL - position) // (w2 * cfg.batch_size)
    assert position + steps2 * w2 * cfg.batch_size == TOTAL
    for rank in range(w2):
        with _stream(cfg, rank, w2) as s:
            s.load_state_dict(states[0])
            for batch in _take(s, steps2):
                metas += batch["meta"]
            assert s.state_dict()["epoch"] == 0 and s.state_dict()["position"] == TOTAL
    assert len(metas) == TOTAL and set(metas) == _all_frames()


@pytest.mark.parametrize("augment", [True, False])  # the workers' ring slots hold float32 / uint8
def test_output_independent_of_worker_count(data_root, tmp_path, augment):
    outs = {}
    for workers in (0, 2):
        with _stream(_cfg(data_root, str(tmp_path), num_workers=workers, augment=augment, batch_size=4)) as s:
            outs[workers] = _take(s, 14)  # crosses the epoch boundary
    for a, b in zip(outs[0], outs[2]):
        _same(a, b)


def test_gcs_source_matches_local(data_root, tmp_path, gcs_bucket):
    for name in LENGTHS:
        local = CuratedDataset(data_root, name).url
        for file in sorted(os.listdir(local)):
            with open(os.path.join(local, file), "rb") as f:
                fs.write_bytes(CuratedDataset(gcs_bucket, name).file(file), f.read())
    with _stream(_cfg(data_root, str(tmp_path / "a"))) as s:
        want = _take(s, 6)
    with _stream(_cfg(gcs_bucket, str(tmp_path / "b"))) as s:
        got = _take(s, 6)
    for a, b in zip(want, got):
        _same(a, b)


def _flip_record(source: CuratedSource, record: int) -> str:
    """Flip 16 bytes in the middle of ``record`` of shard 0 (its data CRC then fails); returns the shard."""
    shard = source.shard_urls[0]
    start, size = int(source._offsets[0][record]), int(source._sizes[0][record])
    with open(shard, "r+b") as f:
        f.seek(start + size // 2)
        chunk = f.read(16)
        f.seek(start + size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return shard


def test_corrupt_record_is_counted_and_skipped(data_root, tmp_path, caplog):
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    cfg = _cfg(root, str(tmp_path), batch_size=4)
    # the index is cached before the damage
    source = CuratedSource(CuratedDataset(root, "bridge_orig"), index_cache_dir=cfg.index_cache_dir)
    shard = _flip_record(source, 1)
    with caplog.at_level(logging.WARNING, logger="pipeline.stream"), _stream(cfg) as s:
        batches = _take(s, 12)  # one full epoch
        assert all(len(b["meta"]) == 4 for b in batches)
        assert s.stats["corrupt_episodes"] == 1
        assert s.stats["replaced_samples"] == int(source.layout.episode_frames[1])
    assert any(shard in r.getMessage() and "record 1" in r.getMessage() for r in caplog.records)


def test_a_missing_shard_fails_loudly_naming_the_episode(data_root, tmp_path):
    """Only corrupt bytes are skipped: an episode that cannot be read for another reason (here its shard
    was deleted after indexing) stops the stream with the dataset, episode, shard and record named."""
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    cfg = _cfg(root, str(tmp_path), batch_size=4)
    source = CuratedSource(CuratedDataset(root, "bridge_orig"), index_cache_dir=cfg.index_cache_dir)
    os.remove(source.shard_urls[1])
    with _stream(cfg) as s:
        with pytest.raises(RuntimeError) as err:
            _take(s, 12)
        assert s.stats["corrupt_episodes"] == 0 and s.stats["replaced_samples"] == 0
    message = str(err.value)
    assert "dataset bridge_orig" in message and f"{source.shard_urls[1]} record" in message
    assert "FileNotFoundError" in message and isinstance(err.value.__cause__, FileNotFoundError)


def _curated_record(steps: int = 3, **changes) -> dict:
    ex = {"steps/is_first": np.array([1] + [0] * (steps - 1)), "steps/action": np.zeros(steps * 7, np.float32),
          "steps/language_instruction": [b"pick"] * steps, "steps/observation/image_primary": [b"jpg"] * steps,
          "episode_metadata/episode_id": [b"ep7"]}
    ex.update(changes)
    return {k: v for k, v in ex.items() if v is not None}


@pytest.mark.parametrize("changes,reason", [
    ({"steps/action": None}, "no steps/action"),
    ({"steps/action": np.zeros(20, np.float32)}, "steps/action has 20 values, expected 3 x 7"),
    ({"steps/action": [b"x"] * 21}, "steps/action has 21 values"),
    ({"steps/language_instruction": [b"pick"] * 2}, "steps/language_instruction holds 2 values for 3 steps"),
    ({"steps/observation/image_primary": np.zeros(3)}, "image_primary holds 3 values"),
    ({"steps/language_instruction": [b"\xff"] * 3}, "not UTF-8"),
    ({"episode_metadata/episode_id": np.array([7])}, "episode_id is not one text value"),
])
def test_a_record_that_is_not_a_curated_episode_is_a_data_error(changes, reason):
    episode = _curated_episode(_curated_record(), ["primary", "wrist"], "x.tfrecord", 4)
    assert episode.episode_id == "ep7" and episode.action.shape == (3, 7) and episode.images["wrist"] == [b""] * 3
    with pytest.raises(CorruptRecordError, match=f"x.tfrecord: record 4 is corrupt .*{reason}"):
        _curated_episode(_curated_record(**changes), ["primary"], "x.tfrecord", 4)


def test_corrupt_record_found_by_the_index_scan_is_left_out(data_root, tmp_path, caplog):
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    pristine = CuratedSource(CuratedDataset(root, "bridge_orig"), index_cache_dir=str(tmp_path / "pristine"))
    shard = _flip_record(pristine, 1)
    cfg = _cfg(root, str(tmp_path))  # fresh index cache: the scan sees the damage
    with caplog.at_level(logging.WARNING, logger="pipeline.stream"), _stream(cfg) as s:
        assert s.epoch_length() == TOTAL - LENGTHS["bridge_orig"][1]
        # the shares still follow the statistics (30 : 18) over the 42 frames left: 26.25, 15.75 -> 26, 16
        assert s.counts.tolist() == [26, 16]
        metas = [m for b in _take(s, s.epoch_length() // 2) for m in b["meta"]]
    lost = {("bridge_orig", "bridge_orig-00001", f) for f in range(LENGTHS["bridge_orig"][1])}
    bridge = [m for m in metas if m[0] == "bridge_orig"]
    assert len(bridge) == 26 and set(bridge) == {m for m in _all_frames() - lost if m[0] == "bridge_orig"}
    assert set(metas) <= _all_frames() - lost
    assert any(shard in r.getMessage() and "record 1" in r.getMessage() for r in caplog.records)


def test_mismatched_state_is_refused(data_root, tmp_path):
    cfg = _cfg(data_root, str(tmp_path))
    with _stream(cfg) as s:
        next(s)
        state = s.state_dict()
    with _stream(_cfg(data_root, str(tmp_path), seed=6)) as other, pytest.raises(UserError, match="seed"):
        other.load_state_dict(state)
    weighted = Mixture(name="t", datasets={"bridge_orig": 1.0, "fractal20220817_data": 2.0})
    with _stream(cfg, mixture=weighted) as other, pytest.raises(UserError, match="mixture_hash"):
        other.load_state_dict(state)
    with _stream(_cfg(data_root, str(tmp_path), buffer_bytes=4 * 2**20)) as other:
        # a 4x budget gives 4x the shuffle windows: same mixture, another plan
        assert other.mixture_hash == state["mixture_hash"] and other.plan_hash != state["plan_hash"]
        with pytest.raises(UserError, match="plan_hash"):
            other.load_state_dict(state)


def test_shares_follow_num_transitions_and_a_change_refuses_the_state(data_root, tmp_path):
    """Shares weight num_transitions of the statistics (split all), not the training frames; new statistics
    with the same frames change the draws, so an old state is refused rather than resumed differently."""
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    cfg = _cfg(root, str(tmp_path))
    with _stream(cfg) as s:  # the fixture's statistics count exactly its frames: 30 : 18
        assert s.counts.tolist() == [30, 18]
        next(s)
        state = s.state_dict()
    stats = CuratedDataset(root, "bridge_orig").file(STATISTICS_NAME)
    fs.write_json(stats, {"bridge_orig": {**fs.read_json(stats)["bridge_orig"], "num_transitions": 66}})
    with _stream(cfg) as other:
        # 66 : 18 of 48 training frames -> 37.71, 10.29 -> 38, 10
        assert other.epoch_length() == TOTAL and other.counts.tolist() == [38, 10]
        assert other.shares.tolist() == pytest.approx([66 / 84, 18 / 84])
        with pytest.raises(UserError, match="mixture_hash.*statistics"):
            other.load_state_dict(state)
    flat = Mixture(name="t", datasets=dict(MIX.datasets), balance_by_size=False)
    with _stream(_cfg(data_root, str(tmp_path)), mixture=flat) as a, _stream(cfg, mixture=flat) as b:
        assert a.mixture_hash == b.mixture_hash  # not balanced: the statistics do not change the draws


def test_a_weighted_dataset_left_without_frames_is_a_user_error(data_root, tmp_path):
    """Its statistics give it a share, but its only record is corrupt: nothing to draw, one clear line."""
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    write_curated_dataset(root, "taco_play", episode_lengths=[5], shards=1, image_size=20, seed=3)
    _flip_record(CuratedSource(CuratedDataset(root, "taco_play"), index_cache_dir=str(tmp_path / "pristine")), 0)
    mixture = Mixture(name="m", datasets={**MIX.datasets, "taco_play": 1.0})
    with pytest.raises(UserError, match=r"mixture m: no train frames to draw for taco_play \(num_transitions 5\)"):
        _stream(_cfg(root, str(tmp_path)), mixture=mixture)


def test_weighted_mixture_draw_counts(data_root, tmp_path):
    weighted = Mixture(name="w", datasets={"bridge_orig": 1.0, "fractal20220817_data": 2.0})
    with _stream(_cfg(data_root, str(tmp_path), batch_size=4), mixture=weighted) as s:
        assert s.counts.tolist() == [22, 26]  # 30*1 : 18*2 of 48, largest remainder
        names = [m[0] for b in _take(s, 12) for m in b["meta"]]
    assert names.count("fractal20220817_data") == 26  # > 18 frames: wraps into a second pass


def test_tight_buffer_shrinks_window_but_keeps_coverage(data_root, tmp_path):
    cfg = _cfg(data_root, str(tmp_path), batch_size=4)
    sources = [CuratedSource(CuratedDataset(data_root, n), index_cache_dir=cfg.index_cache_dir) for n in LENGTHS]
    for src in sources:  # pretend episodes are huge: the 1 MiB budget then allows a window of 1 episode
        src.episode_bytes = src.episode_bytes * 10**6
    with TrainingStream(cfg.cfg, **cfg.args(), rank=0, world_size=1, prompt_builder=StubBuilder(), pad_id=0,
                        mixture=MIX, sources=sources) as tight, _stream(cfg) as loose:
        assert tight.windows == [1, 1] and min(loose.windows) > 10
        tight_metas = [b["meta"] for b in _take(tight, 12)]
        loose_metas = [b["meta"] for b in _take(loose, 12)]
    assert {m for b in tight_metas for m in b} == _all_frames()
    distinct = [np.mean([len({m[1] for m in b}) for b in metas]) for metas in (tight_metas, loose_metas)]
    assert distinct[0] < distinct[1]  # window 1: each batch comes from ~1 episode per dataset


def test_manifest_index_skips_the_scan(data_root, tmp_path):
    from pipeline.data.stream.source import _scan_shard

    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    for name in LENGTHS:
        dataset = CuratedDataset(root, name)
        manifest = dataset.manifest()
        for entry in manifest["shards"]:
            entry["index"] = _scan_shard(dataset.file(entry["file"]))
        fs.write_json(dataset.file(MANIFEST_NAME), manifest)
    cfg = _cfg(root, str(tmp_path / "fresh"))
    with _stream(cfg) as s, _stream(_cfg(data_root, str(tmp_path))) as ref:
        for a, b in zip(_take(s, 4), _take(ref, 4)):
            assert a["meta"] == b["meta"] and torch.equal(a["pixel_values"], b["pixel_values"])
    assert not os.path.exists(cfg.index_cache_dir)


def test_config_checks():
    with pytest.raises(ValueError, match="batch_size"):
        TrainingStream(StreamConfig(), data_root="x", mixture=MIX, batch_size=0, seed=0, resolution=8, rank=0,
                       world_size=1, prompt_builder=StubBuilder(), pad_id=0)
    with pytest.raises(ValueError, match="cameras"):
        StreamConfig(cameras=["top"])


def test_real_prompt_builder_and_extra_camera(data_root, tmp_path):
    from pipeline.model.prompt import ActionPromptBuilder
    from pipeline.model.text_tokenizer import build_demo_tokenizer

    builder = ActionPromptBuilder(build_demo_tokenizer(["pick up the red block"]))
    cfg = _cfg(data_root, str(tmp_path), cameras=["primary", "wrist"])
    with TrainingStream(cfg.cfg, **cfg.args(), rank=0, world_size=1, prompt_builder=builder, mixture=MIX) as s:
        batch = next(s)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"] != -100).sum(1).tolist() == [8, 8]  # 7 action tokens + </s>
    assert batch["pixel_values_wrist"].shape == (2, 3, 8, 8) and not batch["pixel_values_wrist"].any()
