"""Dataset mixtures: ``dataset_mixtures/<name>.yaml`` and its validation, parsed once into a :class:`Mixture`.

File format (comments allowed)::

    name: demo
    description: one line
    balance_by_size: true          # share_i ∝ w_i * N_i (OpenVLA) ; false: share_i ∝ w_i
    datasets:                      # registry name -> non-negative weight
      bridge_orig: 1.0
      fractal20220817_data: 0.5
    overrides:                     # optional, per dataset
      bridge_orig:
        filters: {min_steps: 3}    # any pipeline.data.curate.filters.FilterConfig field
        cameras: {secondary: null} # camera slot -> raw observation key (or null)

Every problem (malformed YAML, duplicate key, unknown dataset, JOINT_POS dataset, negative or
all-zero weights, unknown override) is a :class:`UserError` naming the file, the line and the key.

Shares, draws per epoch and the epoch definition: :mod:`pipeline.data.mixture.shares`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import yaml

from pipeline import fs
from pipeline.data.yaml_doc import parse_with_lines
from pipeline.errors import UserError

__all__ = [
    "Mixture",
    "MIXTURE_DIR",
    "load_mixture",
    "parse_mixture",
    "list_mixtures",
    "mixture_path",
]

MIXTURE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "dataset_mixtures")
_TOP_KEYS = ("name", "description", "balance_by_size", "datasets", "overrides")
_OVERRIDE_KEYS = ("filters", "cameras")


@dataclass(frozen=True, kw_only=True)
class Mixture:
    name: str
    datasets: dict[str, float]
    balance_by_size: bool = True
    overrides: dict[str, dict] = field(default_factory=dict)
    description: str = ""
    path: str = ""

    def active(self) -> dict[str, float]:
        """Datasets with a positive weight, in file order."""
        return {k: w for k, w in self.datasets.items() if w > 0}


# ---------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse(text: str, path: str) -> tuple[dict, dict[str, int]]:
    data, lines = parse_with_lines(text, path, what="mixture YAML", loader=_Loader)
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a mixture file must be a mapping with keys {', '.join(_TOP_KEYS)}")
    return data, lines


# ---------------------------------------------------------------------------------------- validation
class _Where:
    def __init__(self, path: str, lines: dict[str, int]) -> None:
        self.path, self.lines = path, lines

    def error(self, key: str, message: str) -> UserError:
        line = self.lines.get(key) or self.lines.get(key.rsplit(".", 1)[0], 1)
        return UserError(f"{self.path}:{line}: {key}: {message}")


def _check_dataset(name: str, where: _Where) -> None:
    from pipeline.data.oxe import get_spec  # imported when a file is parsed: the Mixture type stays light

    try:
        spec = get_spec(name)
    except UserError as e:
        raise where.error(f"datasets.{name}", str(e)) from None
    try:
        spec.check_trainable()
    except UserError as e:
        raise where.error(f"datasets.{name}", str(e)) from None


def _weights(raw: object, where: _Where) -> dict[str, float]:
    if not isinstance(raw, dict) or not raw:
        raise where.error("datasets", "expected a non-empty mapping 'dataset_name: weight'")
    weights: dict[str, float] = {}
    for name, w in raw.items():
        key = f"datasets.{name}"
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise where.error(key, f"weight must be a number, got {w!r}")
        if w < 0 or w != w:
            raise where.error(key, f"weight must be >= 0, got {w}")
        _check_dataset(str(name), where)
        weights[str(name)] = float(w)
    if not any(w > 0 for w in weights.values()):
        raise where.error("datasets", "all weights are zero; give at least one dataset a positive weight")
    return weights


def _overrides(raw: object, datasets: dict[str, float], where: _Where) -> dict[str, dict]:
    from pipeline.data.curate.filters import FilterConfig
    from pipeline.data.schema import CAMERA_SLOTS

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise where.error("overrides", "expected a mapping 'dataset_name: {filters: ..., cameras: ...}'")
    filter_keys = {f.name for f in dataclasses.fields(FilterConfig)}
    for name, entry in raw.items():
        key = f"overrides.{name}"
        if name not in datasets:
            raise where.error(key, "dataset is not listed under 'datasets'")
        if not isinstance(entry, dict):
            raise where.error(key, f"expected a mapping with keys {_OVERRIDE_KEYS}")
        for sub, value in entry.items():
            if sub not in _OVERRIDE_KEYS:
                raise where.error(f"{key}.{sub}", f"unknown override; expected one of {_OVERRIDE_KEYS}")
            allowed = filter_keys if sub == "filters" else set(CAMERA_SLOTS)
            if not isinstance(value, dict):
                raise where.error(f"{key}.{sub}", "expected a mapping")
            for k in value:
                if k not in allowed:
                    raise where.error(f"{key}.{sub}.{k}", f"unknown key; expected one of {sorted(allowed)}")
    return {str(k): dict(v) for k, v in raw.items()}


def parse_mixture(text: str, path: str = "<mixture>") -> Mixture:
    data, lines = _parse(text, path)
    where = _Where(path, lines)
    for key in data:
        if key not in _TOP_KEYS:
            raise where.error(str(key), f"unknown key; expected one of {', '.join(_TOP_KEYS)}")
    balance = data.get("balance_by_size", True)
    if not isinstance(balance, bool):
        raise where.error("balance_by_size", f"expected true or false, got {balance!r}")
    datasets = _weights(data.get("datasets"), where)
    default_name = os.path.splitext(os.path.basename(path))[0]
    return Mixture(name=str(data.get("name") or default_name), datasets=datasets, balance_by_size=balance,
                   overrides=_overrides(data.get("overrides"), datasets, where),
                   description=str(data.get("description") or ""), path=path)


def list_mixtures() -> list[str]:
    if not os.path.isdir(MIXTURE_DIR):
        return []
    return sorted(os.path.splitext(f)[0] for f in os.listdir(MIXTURE_DIR) if f.endswith((".yaml", ".yml")))


def mixture_path(name_or_path: str) -> str:
    """A registered mixture name (file in dataset_mixtures/) or a path/URL to a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        if not fs.exists(name_or_path):
            raise UserError(f"mixture file {name_or_path} not found")
        return name_or_path
    path = os.path.join(MIXTURE_DIR, f"{name_or_path}.yaml")
    if not os.path.exists(path):
        import difflib

        close = difflib.get_close_matches(name_or_path, list_mixtures(), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(list_mixtures())})"
        raise UserError(f"mixture '{name_or_path}' not found in {MIXTURE_DIR}{hint}")
    return path


def load_mixture(name_or_path: str) -> Mixture:
    path = mixture_path(name_or_path)
    return parse_mixture(fs.read_text(path), path)
