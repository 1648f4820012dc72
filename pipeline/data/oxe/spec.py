"""DatasetSpec: one OXE dataset's layout, conventions and standardization, plus the registry dict.

A dataset module builds specs with ``DatasetSpec(...)`` and a ``transform`` that maps the raw
episode onto the canonical action/state (see :class:`Std`); this module does the parts shared by
every dataset: episode id, camera slots (with the optional deterministic DROID swap), proprio
concatenation, language decoding and step flags.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from pipeline.data import schema
from pipeline.data.oxe import transforms as tf
from pipeline.errors import UserError

__all__ = [
    "DatasetSpec",
    "Std",
    "STANDARDIZATION_VERSION",
    "REGISTRY",
    "register",
    "lookup",
    "step",
]

# Bump when any standardization semantics change: curation caches statistics under this string.
STANDARDIZATION_VERSION = "oxe-std-1"

ACTION_ENCODINGS = ("EEF_POS", "JOINT_POS", "JOINT_POS_BIMANUAL", "EEF_R6")
TRAINABLE_ENCODINGS = ("EEF_POS", "EEF_R6")
STATE_ENCODINGS = ("NONE", "POS_EULER", "POS_QUAT", "JOINT", "JOINT_BIMANUAL")


class Std(NamedTuple):
    """What a dataset transform returns (T' = number of kept steps).

    action: float[T', 7] canonical action; state: derived state keys -> float[T', k] (state keys not
    listed here are read from raw ``steps/observation/<key>``); index: int[T'] raw step index of each
    kept step (None = all steps kept).
    """

    action: np.ndarray
    state: dict
    index: np.ndarray | None = None


Transform = Callable[[dict, bool], Std]
Inverse = Callable[[dict, np.random.Generator], dict]


def lookup(tree: Mapping, path: str) -> Any:
    """Value at ``path`` ("steps/observation/x") in a nested dict; keys may themselves contain "/"."""
    if path in tree:
        return tree[path]
    head, sep, rest = path.partition("/")
    while sep:
        if head in tree and isinstance(tree[head], Mapping):
            return lookup(tree[head], rest)
        nxt, sep, rest = rest.partition("/")
        head = f"{head}/{nxt}"
    raise KeyError(path)


def step(raw: dict, *path: str) -> np.ndarray:
    """Per-step array ``raw["steps"][path...]`` (a missing key raises KeyError naming the path)."""
    node = raw["steps"]
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError("steps/" + "/".join(path[: i + 1]))
        node = node[key]
    return np.asarray(node)


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """Registry entry of one OXE dataset (facts: /work/shared/oxe/datasets.yaml)."""

    name: str
    version: str
    features: dict  # nested; leaves are facts-file type strings
    cameras: dict  # slot -> raw observation key or None
    depth: dict
    state_keys: tuple  # derived/raw observation keys; None = one 0.0
    state_encoding: str
    action_encoding: str
    language_key: str | None  # e.g. "steps/language_instruction"; None = unlabeled dataset
    splits: dict
    in_magic_soup_plus: bool = False
    episode_filters: tuple = ()  # (reason, fn(raw) -> bool keep)
    # (reason, fn(canonical_ep, normalized_action float32[T, 7]) -> bool[T] keep); runs after
    # statistics, on the action normalized with them (BOUNDS_Q99), as OpenVLA's frame filters do
    frame_filter: tuple | None = None
    state_size: int = 8
    known_issues: tuple = ()  # one-line descriptions; "[fixable]" ones change with fix_known_issues
    control_hz: float | None = None
    aliases: tuple = ()
    # --- implementation (not part of the facts) ---
    transform: Transform | None = None
    inverse: Inverse | None = None
    episode_id_keys: tuple = ()  # candidate episode-level paths for the episode id, in priority order
    camera_swap: tuple | None = None  # (slot_a, slot_b): swapped for half the episodes (hash of id)
    constant_action_dims: dict = field(default_factory=dict)  # dim -> value the source cannot carry
    synthesis_notes: str = ""  # what synthesize_raw_steps -> standardize loses

    def __post_init__(self):
        if self.action_encoding not in ACTION_ENCODINGS:
            raise ValueError(f"{self.name}: action_encoding must be one of {ACTION_ENCODINGS}")
        if self.state_encoding not in STATE_ENCODINGS:
            raise ValueError(f"{self.name}: state_encoding must be one of {STATE_ENCODINGS}")
        if set(self.cameras) != set(schema.CAMERA_SLOTS) or set(self.depth) != set(schema.CAMERA_SLOTS):
            raise ValueError(f"{self.name}: cameras/depth must map exactly {schema.CAMERA_SLOTS}")

    # ------------------------------------------------------------------ checks
    def check_trainable(self) -> None:
        """Raise UserError when OpenVLA-style training cannot use this dataset (non-EEF actions)."""
        if self.action_encoding not in TRAINABLE_ENCODINGS:
            raise UserError(
                f"{self.name} uses {self.action_encoding} actions; OpenVLA trains only on EEF_POS "
                f"(or EEF_R6) datasets - remove '{self.name}' from the mixture"
            )
        if self.transform is None:
            raise UserError(f"{self.name} has no standardization transform; remove it from the mixture")

    # ------------------------------------------------------------------ standardize
    def standardize(self, raw: dict, *, fix_known_issues: bool = False) -> dict:
        """Raw episode (reader output) -> canonical episode (pipeline.data.schema). Pure; numpy only.

        Reads: the keys named by ``transform``, ``cameras``, ``state_keys``, ``language_key``,
        ``episode_id_keys``, steps/is_first|is_last|is_terminal and ``_source``.
        """
        self.check_trainable()
        try:
            std = self.transform(raw, fix_known_issues)
            index = np.arange(len(std.action)) if std.index is None else np.asarray(std.index)
            episode_id = self.episode_id(raw)
            steps = {
                **self._images(raw, index, episode_id),
                "proprio": self._proprio(raw, std.state, index),
                "action": self._action(std.action, len(index)),
                "language_instruction": self._language(raw, index),
                **_flags(raw, index),
            }
        except KeyError as err:
            raise UserError(
                f"{self.name}: raw episode lacks key {err.args[0]!r} (see get_spec('{self.name}').features)"
            ) from None
        source = raw.get("_source", {})
        return {
            "dataset_name": self.name,
            "episode_id": episode_id,
            "source_file": str(source.get("file", "")),
            "source_index": int(source.get("index", -1)),
            "steps": steps,
        }

    def episode_id(self, raw: dict) -> str:
        """Id from the first non-empty ``episode_id_keys`` entry, else "<basename(file)>#<index>"."""
        for key in self.episode_id_keys:
            try:
                value = lookup(raw, key)
            except KeyError:
                continue
            value = value.item() if isinstance(value, np.ndarray) else value
            value = value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)
            if value:
                return value
        source = raw.get("_source", {})
        return f"{os.path.basename(str(source.get('file', '')))}#{source.get('index', 0)}"

    def _images(self, raw: dict, index: np.ndarray, episode_id: str) -> dict:
        cameras = dict(self.cameras)
        if self.camera_swap and tf.hash_coin(self.name, episode_id):
            a, b = self.camera_swap
            cameras[a], cameras[b] = cameras[b], cameras[a]
        out = {}
        for slot in schema.CAMERA_SLOTS:
            images = np.full(len(index), b"", object)
            if cameras[slot] is not None:
                column = step(raw, "observation", cameras[slot])
                images[:] = [bytes(column[i]) for i in index]
            out[f"image_{slot}"] = images
        return out

    def _proprio(self, raw: dict, derived: dict, index: np.ndarray) -> np.ndarray:
        parts = []
        for key in self.state_keys:
            if key is None:
                parts.append(np.zeros((len(index), 1), np.float32))
            elif key in derived:
                parts.append(np.asarray(derived[key], np.float32).reshape(len(index), -1))
            else:
                col = step(raw, "observation", key)
                parts.append(np.asarray(col[index], np.float32).reshape(len(index), -1))
        proprio = np.concatenate(parts, axis=1) if parts else np.zeros((len(index), 0), np.float32)
        if proprio.shape[1] != self.state_size:
            raise UserError(
                f"{self.name}: proprio has {proprio.shape[1]} dims, registry says {self.state_size}"
            )
        return proprio

    def _action(self, action: np.ndarray, t: int) -> np.ndarray:
        action = np.asarray(action, np.float32)
        if action.shape != (t, schema.ACTION_DIM):
            raise UserError(f"{self.name}: standardized action has shape {action.shape}, expected ({t}, 7)")
        return action

    def _language(self, raw: dict, index: np.ndarray) -> np.ndarray:
        if self.language_key is None:
            return np.full(len(index), "", object)
        values = np.asarray(lookup(raw, self.language_key))
        text = tf.decode_code_points(values) if values.dtype.kind in "iu" else tf.decode_text(values)
        return text[index]

    # ------------------------------------------------------------------ synthesize
    def synthesize_raw_steps(self, plan: dict, rng: np.random.Generator) -> dict:
        """Inverse of ``standardize`` for fixtures (see module docstrings for each dataset's losses).

        plan: {"action": float32[T,7], "proprio_xyz": float32[T,3], "proprio_rpy": float32[T,3],
        "gripper": float32[T], "instruction": str}. Returns the raw values (nested like
        features["steps"]) of every key the standardization reads, plus "_episode" (episode-level
        keys) where needed. Raw step count is T, except where ``synthesis_notes`` says otherwise.
        """
        self.check_trainable()
        if self.inverse is None:
            raise UserError(f"{self.name}: no synthesize_raw_steps inverse is registered")
        out = self.inverse(plan, rng)
        if self.language_key is not None and self.language_key.startswith("steps/"):
            n = _num_raw_steps(out)
            node = out
            *parents, leaf = self.language_key.split("/")[1:]
            for key in parents:
                node = node.setdefault(key, {})
            if _leaf_type(self.features, self.language_key).startswith("Tensor"):
                node[leaf] = np.stack([tf.encode_code_points(plan["instruction"])] * n)
            else:
                node[leaf] = np.full(n, plan["instruction"].encode("utf-8"), object)
        return out


def _num_raw_steps(tree: dict) -> int:
    for key, value in tree.items():
        if key == "_episode":
            continue
        if isinstance(value, dict):
            n = _num_raw_steps(value)
            if n >= 0:
                return n
        else:
            return len(value)
    return -1


def _leaf_type(features: dict, path: str) -> str:
    leaf = lookup(features, path)
    return leaf if isinstance(leaf, str) else ""


def _flags(raw: dict, index: np.ndarray) -> dict:
    """is_first/is_last by position among the kept steps; is_terminal carried from the raw steps
    (the last kept step is terminal when any dropped trailing step was)."""
    t = len(index)
    first, last, terminal = np.zeros(t, bool), np.zeros(t, bool), np.zeros(t, bool)
    if t:
        first[0] = last[-1] = True
        if "is_terminal" in raw["steps"]:
            raw_terminal = np.asarray(raw["steps"]["is_terminal"], bool)
            terminal = raw_terminal[index]
            terminal[-1] = bool(raw_terminal[index[-1] :].any())
    return {"is_first": first, "is_last": last, "is_terminal": terminal}


# ---------------------------------------------------------------------- registry
REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def register(*specs: DatasetSpec) -> None:
    """Add specs (and their aliases) to the registry; duplicate names are a bug."""
    for spec in specs:
        for name in (spec.name, *spec.aliases):
            if name in REGISTRY or name in _ALIASES:
                raise ValueError(f"OXE registry: duplicate dataset name {name!r}")
        REGISTRY[spec.name] = spec
        _ALIASES.update({alias: spec.name for alias in spec.aliases})


def resolve(name: str) -> DatasetSpec:
    """Spec by name or alias; UserError with close-name suggestions otherwise."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in _ALIASES:  # same config under another directory name (e.g. bridge_dataset)
        return replace(REGISTRY[_ALIASES[name]], name=name, aliases=())
    close = difflib.get_close_matches(name, [*REGISTRY, *_ALIASES], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(f"unknown OXE dataset {name!r}{hint} (see pipeline.data.oxe.list_datasets())")
