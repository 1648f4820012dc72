"""Mixture files: shipped mixtures load, validation names file/line/key."""

from __future__ import annotations

import pytest
import yaml

from pipeline import fs
from pipeline.data.mixture.files import MIXTURE_DIR, list_mixtures, load_mixture, parse_mixture
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


def test_mixture_dir_is_in_repo():
    assert fs.exists(MIXTURE_DIR)
