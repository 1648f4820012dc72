"""``vla inspect``: read RLDS datasets back through the registry and print one row per dataset.

For each dataset directory ``<data>/<name>/[<version>/]`` the episodes of every split are read with
our own reader (:func:`pipeline.data.io.rlds_reader.read_episodes`, no TensorFlow), standardized with
``get_spec(name).standardize`` and validated with :func:`pipeline.data.schema.validate_episode`.
The table shows episodes, raw steps, standardized transitions, the camera slots that hold images
(``p``rimary, ``s``econdary, ``w``rist; ``-`` = empty), per-dimension min..max of the standardized
action, whether the on-disk features match the registry, and a language example. A missing or
unreadable dataset is a ``UserError`` (one ``error:`` line, exit status 2) after the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import fs
from pipeline.config import MISSING, as_name_list, helpfield
from pipeline.data import schema
from pipeline.errors import UserError

__all__ = ["InspectConfig", "DatasetSummary", "run_inspect", "summarize_dataset", "format_table",
           "list_dataset_dirs"]


@dataclass(kw_only=True)
class InspectConfig:
    data: str = helpfield(MISSING, "data root holding <name>/<version>/ builder dirs (local or gs://)")
    datasets: Any = helpfield(["all"], "list of dataset names, or all (= every registry dataset under data)")
    max_episodes: int = helpfield(0, "read at most this many episodes per dataset (0 = all)")

    def __post_init__(self) -> None:
        if self.max_episodes < 0:
            raise ValueError(f"max_episodes={self.max_episodes}: expected >= 0 (0 = all)")
        self.datasets = as_name_list(self.datasets, "datasets")
        if not self.datasets:
            raise ValueError("datasets=[]: name at least one dataset, or 'all'")


@dataclass
class DatasetSummary:
    name: str
    version: str = ""
    splits: dict = field(default_factory=dict)  # split -> episodes
    episodes: int = 0
    steps: int = 0  # raw RLDS steps
    transitions: int = 0  # standardized steps
    present: np.ndarray = field(default_factory=lambda: np.zeros(len(schema.CAMERA_SLOTS), bool))
    action_min: np.ndarray | None = None
    action_max: np.ndarray | None = None
    features_match: bool = True
    invalid: int = 0  # episodes failing schema.validate_episode
    language: str = ""

    @property
    def cameras(self) -> str:
        """'p-w' style: first letter of each camera slot holding images, '-' when always empty."""
        return "".join(s[0] if p else "-" for s, p in zip(schema.CAMERA_SLOTS, self.present))

    def add(self, split: str, raw: dict, ep: dict) -> None:
        """Count one raw episode and its standardized form."""
        steps = ep["steps"]
        self.splits[split] = self.splits.get(split, 0) + 1
        self.episodes += 1
        self.steps += len(raw["steps"]["is_first"])
        self.transitions += len(steps["action"])
        self.invalid += bool(schema.validate_episode(ep))
        self.present |= [any(len(b) for b in steps[k]) for k in schema.IMAGE_KEYS]
        if len(steps["action"]):
            lo, hi = steps["action"].min(0), steps["action"].max(0)
            self.action_min = lo if self.action_min is None else np.minimum(self.action_min, lo)
            self.action_max = hi if self.action_max is None else np.maximum(self.action_max, hi)
        if not self.language:
            self.language = next((s for s in steps["language_instruction"] if s), "")


def list_dataset_dirs(data: str) -> list[str]:
    """Names of the directories under ``data`` that the OXE registry knows (sorted)."""
    from pipeline.data.oxe import get_spec

    if not fs.exists(data):
        raise UserError(f"data directory {data} not found; pass data=<root with <name>/<version>/ dirs>")
    names = []
    for url in fs.listdir(data):
        name = fs.basename(url)
        try:
            get_spec(name)
        except UserError:
            continue
        names.append(name)
    if not names:
        raise UserError(f"data directory {data} holds no OXE dataset directories (e.g. {data}/bridge_orig/1.0.0)")
    return names


def _features_match(on_disk: dict, spec) -> bool:
    from pipeline.data.io.features import as_spec_tree, to_type_tree

    return to_type_tree(on_disk) == to_type_tree(as_spec_tree(spec.features))


def summarize_dataset(data: str, name: str, *, max_episodes: int = 0) -> DatasetSummary:
    """Read, standardize and validate one dataset (UserError when missing or unreadable)."""
    from pipeline.data.io.builder import open_builder
    from pipeline.data.io.rlds_reader import read_episodes
    from pipeline.data.oxe import get_spec

    spec = get_spec(name)
    info = open_builder(fs.join(data, name))
    out = DatasetSummary(name=name, version=info.version, features_match=_features_match(info.features, spec))
    for split, shards in info.splits.items():
        out.splits[split] = 0
        for shard in shards:
            for raw in read_episodes(shard.url, info.features, dataset=name):
                if max_episodes and out.episodes >= max_episodes:
                    break
                out.add(split, raw, spec.standardize(raw))
    return out


def _num(x: float) -> str:
    return f"{float(x) + 0.0:.2g}"  # + 0.0 turns -0.0 into 0


def _action_range(s: DatasetSummary) -> str:
    if s.action_min is None:
        return "-"
    return " ".join(f"{_num(lo)}..{_num(hi)}" for lo, hi in zip(s.action_min, s.action_max))


def format_table(rows: list[DatasetSummary]) -> str:
    header = ("dataset", "ver", "splits", "eps", "steps", "trans", "cams", "feat", "bad",
              "action min..max (dx dy dz droll dpitch dyaw grip)", "language")
    lines = [header]
    for s in rows:
        splits = ",".join(f"{k}:{v}" for k, v in s.splits.items())
        lines.append((s.name, s.version, splits, str(s.episodes), str(s.steps), str(s.transitions),
                      s.cameras, "ok" if s.features_match else "DIFF", str(s.invalid), _action_range(s),
                      s.language[:40]))
    widths = [max(len(r[i]) for r in lines) for i in range(len(header) - 1)]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in lines]
    total = (f"total: {len(rows)} datasets, {sum(s.episodes for s in rows)} episodes, "
             f"{sum(s.steps for s in rows)} steps, {sum(s.transitions for s in rows)} transitions, "
             f"{sum(s.invalid for s in rows)} invalid episodes")
    return "\n".join(text + [total])


def run_inspect(cfg: InspectConfig) -> int:
    """``vla inspect``: print the table; UserError (exit 2) when a dataset is missing or unreadable."""
    if not fs.exists(cfg.data):
        raise UserError(f"data directory {cfg.data} not found; pass data=<root with <name>/<version>/ dirs>")
    names = list_dataset_dirs(cfg.data) if list(cfg.datasets) == ["all"] else list(cfg.datasets)
    rows, errors = [], []
    for name in names:
        try:
            rows.append(summarize_dataset(cfg.data, name, max_episodes=cfg.max_episodes))
        except UserError as e:
            errors.append(f"{name}: {e}")
        except (ValueError, KeyError, OSError) as e:  # malformed data the reader did not classify
            errors.append(f"{name}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if rows:
        print(format_table(rows))
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{len(errors)} of {len(names)} datasets missing or unreadable: {errors[0]}{more}")
    bad = sum(s.invalid for s in rows)
    if bad:
        raise UserError(f"{bad} episodes fail schema validation (see the 'bad' column)")
    return 0
