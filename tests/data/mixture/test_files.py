"""Mixture files: shipped mixtures load, validation names file/line/key, shares and epoch math, CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline import cli, fs
from pipeline.data.manifest import CuratedDataset
from pipeline.data.mixture.files import (
    MIXTURE_DIR,
    list_mixtures,
    load_mixture,
    parse_mixture,
    passes_per_epoch,
    sampling_shares,
)
from pipeline.errors import UserError

FACTS = "/work/shared/oxe/datasets.yaml"


def _facts_mixtures() -> dict:
    try:
        with open(FACTS) as f:
            return yaml.safe_load(f)["mixtures"]
    except OSError:
        pytest.skip("facts file not available")


@pytest.mark.parametrize("name", ["oxe_magic_soup", "oxe_magic_soup_plus", "oxe_magic_soup_plus_minus", "bridge"])
def test_shipped_mixtures_match_openvla_weights(name):
    mixture = load_mixture(name)
    expected = {k: float(v) for k, v in _facts_mixtures()[name].items() if not k.startswith("_")}
    assert mixture.datasets == expected
    assert mixture.balance_by_size is True


def test_all_shipped_mixtures_load():
    names = list_mixtures()
    assert {"demo", "rt1", "bridge", "oxe_magic_soup_plus"} <= set(names)
    assert load_mixture("rt1").datasets == {"fractal20220817_data": 1.0}
    assert 3 <= len(load_mixture("demo").datasets) <= 4
    for name in names:
        assert load_mixture(name).name == name


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "mix.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("body,line,key,words", [
    ("datasets:\n  bridge_orig: 1.0\n  bridge_orgi: 1.0\n", 3, "datasets.bridge_orgi", "bridge_orig"),
    ("datasets:\n  bridge_orig: -1.0\n", 2, "datasets.bridge_orig", ">= 0"),
    ("datasets:\n  bridge_orig: 0\n  taco_play: 0.0\n", 1, "datasets", "all weights are zero"),
    ("datasets:\n  bridge_orig: 1.0\n  taco_play: 1\n  bridge_orig: 2.0\n", 4, "", "duplicate key 'bridge_orig'"),
    ("datasets:\n  bridge_orig: 1.0\n  berkeley_rpt_converted_externally_to_rlds: 1.0\n", 3,
     "datasets.berkeley_rpt_converted_externally_to_rlds", "JOINT_POS"),
    ("datasets: [bridge_orig\n", 2, "", "malformed"),
    ("datasets:\n  bridge_orig: lots\n", 2, "datasets.bridge_orig", "number"),
    ("datasets:\n  bridge_orig: 1\nweights: {}\n", 3, "weights", "unknown key"),
    ("datasets:\n  bridge_orig: 1\noverrides:\n  bridge_orig:\n    filters: {min_stepz: 3}\n", 5,
     "overrides.bridge_orig.filters.min_stepz", "min_steps"),
])
def test_validation_errors_name_file_line_key(tmp_path, body, line, key, words):
    path = _write(tmp_path, body)
    with pytest.raises(UserError) as err:
        load_mixture(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}:"), msg
    assert key in msg and words in msg, msg


def test_overrides_and_unknown_name():
    mixture = parse_mixture("name: x\nbalance_by_size: false\ndatasets: {bridge_orig: 2, taco_play: 1}\n"
                            "overrides: {bridge_orig: {filters: {min_steps: 3}, cameras: {secondary: null}}}\n")
    assert mixture.overrides["bridge_orig"]["filters"] == {"min_steps": 3}
    with pytest.raises(UserError, match="did you mean demo"):
        load_mixture("demoo")


def test_shares_and_epoch():
    mixture = parse_mixture("datasets: {bridge_orig: 1.0, fractal20220817_data: 0.5, taco_play: 0}\n")
    frames = {"bridge_orig": 300, "fractal20220817_data": 600, "taco_play": 100}
    shares = sampling_shares(mixture, frames)
    assert shares == pytest.approx({"bridge_orig": 0.5, "fractal20220817_data": 0.5, "taco_play": 0.0})
    passes = passes_per_epoch(shares, frames)  # epoch = 1000 frames
    assert passes == pytest.approx({"bridge_orig": 500 / 300, "fractal20220817_data": 500 / 600, "taco_play": 0.0})
    with pytest.raises(ValueError, match="frame counts"):
        sampling_shares(mixture, {})
    flat = parse_mixture("balance_by_size: false\ndatasets: {bridge_orig: 3, taco_play: 1}\n")
    assert sampling_shares(flat) == pytest.approx({"bridge_orig": 0.75, "taco_play": 0.25})
    # equal weights + balance_by_size: every dataset is passed exactly once per epoch
    equal = parse_mixture("datasets: {bridge_orig: 1, taco_play: 1}\n")
    f2 = {"bridge_orig": 123, "taco_play": 7}
    assert passes_per_epoch(sampling_shares(equal, f2), f2) == pytest.approx({"bridge_orig": 1.0, "taco_play": 1.0})


def _fake_curated(root: str, frames: dict[str, int]) -> None:
    for name, n in frames.items():
        fs.write_json(fs.join(CuratedDataset(root, name).url, "manifest.json"), {"total_frames": n, "total_episodes": n // 10})


def test_cli_show_and_diff(tmp_path, capsys):
    assert cli.main(["mixture", "show", "demo"]) == 0
    out = capsys.readouterr().out
    assert "?" in out and "epoch" in out and "bridge_orig" in out
    root = str(tmp_path / "curated")
    _fake_curated(root, {"bridge_orig": 400, "fractal20220817_data": 400, "taco_play": 200})
    plot = str(tmp_path / "mix.png")
    assert cli.main(["mixture", "show", "demo", f"curated={root}", "--json", "--plot", plot,
                     "steps=10", "global_batch=100"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["dataset"]: r for r in data["datasets"]}
    weights = load_mixture("demo").datasets
    total = sum(weights[n] * rows[n]["frames"] for n in rows)
    for name, r in rows.items():
        assert r["share"] == pytest.approx(weights[name] * r["frames"] / total)
        assert r["passes_per_epoch"] == pytest.approx(r["share"] * 1000 / r["frames"])
        assert r["passes_per_run"] == pytest.approx(r["share"] * 1000 / r["frames"])
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["mixture", "diff", "oxe_magic_soup_plus", "oxe_magic_soup_plus_minus"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "droid" in out and "language_table" in out and "changed" in out
    assert cli.main(["mixture", "show", "nope_mix"]) == 2
    assert "not found" in capsys.readouterr().err


def test_mixture_dir_is_in_repo():
    assert fs.exists(MIXTURE_DIR)
