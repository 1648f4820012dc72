"""The curated reader: OpenVLA's dataset size (num_transitions) from the statistics, bad values named."""

from __future__ import annotations

import pytest

from pipeline import fs
from pipeline.data.manifest import STATISTICS_NAME, CuratedDataset
from pipeline.errors import UserError


def test_num_transitions_from_the_statistics(tmp_path):
    dataset = CuratedDataset(str(tmp_path), "bridge_orig")
    with pytest.raises(UserError, match=f"{STATISTICS_NAME} not found"):
        dataset.num_transitions()
    fs.write_json(dataset.file(STATISTICS_NAME), {"bridge_orig": {"num_transitions": 1234, "num_trajectories": 9}})
    assert dataset.num_transitions() == 1234
    for bad in ({"bridge_orig": {}}, {"other": {"num_transitions": 5}}, {"bridge_orig": {"num_transitions": -1}},
                {"bridge_orig": {"num_transitions": 2.5}}, {"bridge_orig": {"num_transitions": True}}):
        fs.write_json(dataset.file(STATISTICS_NAME), bad)
        with pytest.raises(UserError, match=r"dataset_statistics.json: expected an integer 'bridge_orig.num_transitions'"):
            dataset.num_transitions()
