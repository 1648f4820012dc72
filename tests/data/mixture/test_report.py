"""``vla mixture show | diff``: the table, JSON and plot; the per-epoch draws are those of a real stream epoch."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline import cli, fs
from pipeline.data.fixtures.curated import write_curated_dataset
from pipeline.data.manifest import MANIFEST_NAME, STATISTICS_NAME, CuratedDataset
from pipeline.data.mixture.files import load_mixture
from pipeline.data.stream.training_stream import StreamConfig, TrainingStream


def _fake_curated(root: str, frames: dict[str, int], transitions: dict[str, int]) -> None:
    for name, n in frames.items():
        dataset = CuratedDataset(root, name)
        fs.write_json(dataset.file(MANIFEST_NAME), {"total_frames": n, "total_episodes": n // 10})
        fs.write_json(dataset.file(STATISTICS_NAME), {name: {"num_transitions": transitions[name]}})


def test_cli_show_and_diff(tmp_path, capsys):
    assert cli.main(["mixture", "show", "demo"]) == 0
    out = capsys.readouterr().out
    assert "?" in out and "epoch" in out and "bridge_orig" in out
    root = str(tmp_path / "curated")
    _fake_curated(root, {"bridge_orig": 400, "fractal20220817_data": 400, "taco_play": 200},
                  {"bridge_orig": 500, "fractal20220817_data": 420, "taco_play": 140})
    plot = str(tmp_path / "mix.png")
    assert cli.main(["mixture", "show", "demo", f"curated={root}", "--json", "--plot", plot,
                     "steps=10", "global_batch=100"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["dataset"]: r for r in data["datasets"]}
    # weights 1 : 1 : 2 x num_transitions 500 : 420 : 140 = 500 : 420 : 280 of 1200 (not the frames)
    expect = {"bridge_orig": 5 / 12, "fractal20220817_data": 7 / 20, "taco_play": 7 / 30}
    for name, r in rows.items():
        assert r["share"] == pytest.approx(expect[name])
        assert r["passes_per_epoch"] == pytest.approx(r["share"] * 1000 / r["frames"])
        assert r["passes_per_run"] == pytest.approx(r["share"] * 1000 / r["frames"])
    assert [r["num_transitions"] for r in data["datasets"]] == [500, 420, 140]
    # of 1000 draws (the training frames): 416.67, 350, 233.33 -> the one left goes to bridge_orig
    assert [r["draws_per_epoch"] for r in data["datasets"]] == [417, 350, 233] and data["epoch_draws"] == 1000
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["mixture", "diff", "oxe_magic_soup_plus", "oxe_magic_soup_plus_minus"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "droid" in out and "language_table" in out and "changed" in out
    assert cli.main(["mixture", "show", "nope_mix"]) == 2
    assert "not found" in capsys.readouterr().err


def _builder(sample: dict) -> dict:
    ids = np.array([1, 2], np.int64)
    return {**sample, "input_ids": ids, "labels": ids.copy()}


@pytest.mark.parametrize("balance,expect", [(True, [27, 22]), (False, [18, 31])])
def test_report_draws_equal_a_stream_epoch(tmp_path, capsys, balance, expect):
    """What curators see is what the stream draws: the report's per-epoch counts of each dataset equal
    the frames of that dataset in one real epoch of the training stream (weight 0: none), with
    statistics that count more than the training frames (a val split, episodes only in the statistics)."""
    root = str(tmp_path / "curated")
    write_curated_dataset(root, "bridge_orig", episode_lengths=[5, 6, 7, 8, 4], shards=2, image_size=16, seed=0,
                          val_lengths=[3], statistics_only_lengths=[9, 6])
    write_curated_dataset(root, "fractal20220817_data", episode_lengths=[6, 6, 7], shards=1, image_size=16, seed=1,
                          val_lengths=[4])
    path = tmp_path / "mix.yaml"  # taco_play: weight 0 and not curated
    path.write_text(f"name: mix\nbalance_by_size: {str(balance).lower()}\n"
                    "datasets:\n  bridge_orig: 1.0\n  fractal20220817_data: 1.7\n  taco_play: 0\n")
    assert cli.main(["mixture", "show", str(path), f"curated={root}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    draws = {r["dataset"]: r["draws_per_epoch"] for r in report["datasets"]}
    assert [(r["num_transitions"], r["frames"]) for r in report["datasets"]] == [(48, 30), (23, 19), (None, None)]
    # 30 + 19 = 49 draws. balanced: 1 x 48 : 1.7 x 23 = 48 : 39.1 -> 27.003, 21.997 -> 27, 22 (by the
    # training frames it would be 30 : 32.3 -> 24, 25); not balanced: 1 : 1.7 -> 18.15, 30.85 -> 18, 31
    assert report["epoch_draws"] == 49 and draws == dict(zip(draws, [*expect, 0]))

    cfg = StreamConfig(num_workers=0, buffer_bytes=2**20, index_cache_dir=str(tmp_path / "index"))
    with TrainingStream(cfg, data_root=root, batch_size=7, seed=0, resolution=8, rank=0, world_size=1,
                        prompt_builder=_builder, pad_id=0, mixture=load_mixture(str(path))) as stream:
        assert stream.epoch_length() == 49
        seen = Counter(m[0] for _ in range(49 // 7) for m in next(stream)["meta"])
        state = stream.state_dict()
    assert (state["epoch"], state["position"]) == (0, 49)  # exactly one epoch
    assert {name: seen.get(name, 0) for name in draws} == draws
