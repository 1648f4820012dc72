"""User-registered ("bring your own") datasets: one YAML file per dataset, no Python.

Where entries live: ``dataset_mixtures/registry/<name>.yaml`` (tracked next to the mixtures), plus
every directory or ``.yaml`` file listed in the environment variable ``VLA_DATASET_REGISTRY``
(``os.pathsep``-separated). ``pipeline.data.oxe.get_spec`` / ``list_datasets`` see them; a built-in
OXE name can never be shadowed. Curation passes the resolved entry to its Ray tasks, so remote
workers need neither the file nor the variable.

Entry schema (see ``dataset_mixtures/registry/acme_arm_demo.yaml`` for a complete example)::

    name: my_robot                  # = file name; [a-z0-9_]+; not a built-in OXE name
    version: 1.0.0                  # the raw builder version directory
    features: {...}                 # type-string tree (facts notation), or instead:
    infer_from: /data/my_robot/1.0.0   # a TFDS builder dir: features (+ splits, version) from features.json
    splits: {train: 120}            # optional (default from infer_from, else {train: 0})
    cameras: {primary: cam_front, secondary: null, wrist: cam_hand}   # keys of steps/observation
    depth: {primary: null, ...}     # optional
    state_keys: [ee_pose, "joint_state[6:7]", null]   # observation keys, "key[a:b]" slices, null = one 0.0
    state_encoding: POS_QUAT        # NONE | POS_EULER | POS_QUAT | JOINT | JOINT_BIMANUAL
    action_encoding: EEF_POS        # EEF_POS | EEF_R6 trainable; JOINT_POS* registrable, not trainable
    language_key: steps/language_instruction   # or null (unlabeled)
    episode_id_key: episode_metadata/file_path  # optional
    control_hz: 10                  # optional
    action:
      key: action                   # source(s) below steps/, a list is concatenated column-wise
      steps: [{op: quat_to_euler, at: 3}]   # building blocks (pipeline.data.oxe.user_blocks.BLOCKS)
      gripper: relative             # shorthand (GRIPPER_CONVENTIONS), applied to the last column
    episode_filters: [{op: success, key: success}]   # keep episodes whose episode-level key is true

Every problem is a one-line :class:`UserError` ``<file>:<line>: <key>: <what was expected>``.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any

import numpy as np
import yaml

from pipeline.data import schema
from pipeline.data.io.features import FeatureSpec, SequenceSpec, parse_type_tree, to_type_tree
from pipeline.data.oxe import user_blocks as ub
from pipeline.data.oxe.spec import ACTION_ENCODINGS, STATE_ENCODINGS, DatasetSpec, lookup, resolve
from pipeline.data.oxe.user_spec import SLICE, block_defaults, kind, numel, spec_from_entry
from pipeline.data.yaml_doc import parse_with_lines
from pipeline.errors import UserError

__all__ = [
    "ENV_VAR",
    "REGISTRY_DIR",
    "TOP_KEYS",
    "registry_sources",
    "user_datasets",
    "user_spec",
    "user_entry",
    "user_path",
    "entry_hash",
    "load_entry",
    "parse_entry",
    "spec_from_entry",
    "dump_entry",
    "close_user_names",
]

ENV_VAR = "VLA_DATASET_REGISTRY"
REGISTRY_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    "dataset_mixtures", "registry")
TOP_KEYS = ("name", "version", "description", "source", "features", "infer_from", "splits", "cameras", "depth",
            "state_keys", "state_encoding", "action_encoding", "language_key", "episode_id_key", "control_hz",
            "action", "episode_filters")
_ACTION_KEYS = ("key", "steps", "gripper")
_FILTERS = {"success": "keep episodes whose episode-level boolean `key` is true (e.g. success)"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


# ------------------------------------------------------------------------------------ discovery
def registry_sources() -> list[str]:
    """Registry directories/files in lookup order: the tracked directory, then VLA_DATASET_REGISTRY."""
    extra = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return [REGISTRY_DIR, *extra]


def _files() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for src in registry_sources():
        if os.path.isdir(src):
            paths = [os.path.join(src, f) for f in sorted(os.listdir(src)) if f.endswith((".yaml", ".yml"))]
        else:
            paths = [src] if src.endswith((".yaml", ".yml")) and os.path.isfile(src) else []
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            if os.path.abspath(path) not in [os.path.abspath(p) for p in found.get(name, [])]:
                found.setdefault(name, []).append(path)
    return found


def user_datasets() -> list[str]:
    """Names of the user entries found (file names; an entry may still fail validation)."""
    return sorted(_files())


def user_path(name: str) -> str | None:
    """The YAML file of user dataset ``name`` (UserError when two files claim it), or None."""
    paths = _files().get(name)
    if not paths:
        return None
    if len(paths) > 1:
        raise UserError(f"user dataset '{name}' is defined twice: {paths[0]} and {paths[1]}; remove one "
                        f"(sources: {ENV_VAR} and {REGISTRY_DIR})")
    return paths[0]


_CACHE: dict[str, tuple[tuple, dict, DatasetSpec]] = {}


def _load_cached(path: str) -> tuple[dict, DatasetSpec]:
    st = os.stat(path)
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _CACHE.get(path)
    if hit is None or hit[0] != stamp:
        entry = load_entry(path)
        hit = (stamp, entry, spec_from_entry(entry))
        _CACHE[path] = hit
    return hit[1], hit[2]


def user_spec(name: str) -> DatasetSpec | None:
    """The DatasetSpec of user dataset ``name`` (None when no file defines it; UserError when invalid)."""
    path = user_path(name)
    return None if path is None else _load_cached(path)[1]


def user_entry(name: str) -> dict | None:
    """The resolved entry (plain data, features inlined) of user dataset ``name``, or None (also for
    built-in names)."""
    if _is_builtin(name):
        return None
    path = user_path(name)
    return None if path is None else _load_cached(path)[0]


def entry_hash(name: str) -> tuple:
    """() for a built-in dataset; (resolved user entry,) otherwise: part of curation cache keys."""
    entry = user_entry(name)
    return () if entry is None else ({k: v for k, v in entry.items() if k != "_file"},)


def _is_builtin(name: str) -> bool:
    try:
        resolve(name)
    except UserError:
        return False
    return True


# ------------------------------------------------------------------------------------ YAML
class _Where:
    """Error factory naming the file, the line of the key and the key."""

    def __init__(self, path: str, lines: dict[str, int]) -> None:
        self.path, self.lines = path, lines

    def __call__(self, key: str, message: str) -> UserError:
        probe = key
        while probe and probe not in self.lines:
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        line = self.lines.get(probe)
        return UserError(f"{self.path}{f':{line}' if line else ''}: {key}: {message}")


def load_entry(path: str) -> dict:
    """Read and validate one registry YAML file -> resolved entry (UserError naming file/key)."""
    from pipeline import fs

    try:
        text = fs.read_text(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read dataset registry file: {e}") from None
    return parse_entry(text, path)


def parse_entry(text: str, path: str, *, with_lines: bool = True) -> dict:
    """Validate registry YAML ``text`` (``path`` names it in errors, with the key's line unless
    ``with_lines`` is false: text generated by ``vla dataset register``) -> resolved entry."""
    data, lines = parse_with_lines(text, path)
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a dataset registry file must be a mapping with keys {', '.join(TOP_KEYS)}")
    return _Validator(data, path, _Where(path, lines if with_lines else {})).run()


def dump_entry(entry: dict) -> str:
    """YAML text of a resolved entry (what ``vla dataset register`` writes)."""
    body = {k: entry[k] for k in TOP_KEYS if k in entry and k != "infer_from"}
    return yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=120)


# ------------------------------------------------------------------------------------ validation
class _Validator:
    def __init__(self, data: dict, path: str, where: _Where) -> None:
        self.d, self.path, self.err = data, path, where

    def run(self) -> dict:
        unknown = [k for k in self.d if k not in TOP_KEYS]
        if unknown:
            raise self.err(str(unknown[0]), f"unknown key; expected one of {', '.join(TOP_KEYS)}")
        out: dict[str, Any] = {"name": self._name()}
        features, inferred = self._features()
        self.steps = features["steps"].feature
        self.obs = self.steps.get("observation", {}) if isinstance(self.steps.get("observation"), dict) else {}
        self.features = features
        out["version"] = self._version(inferred.get("version"))
        out["description"] = str(self.d.get("description") or "")
        if self.d.get("source") or inferred.get("source"):
            out["source"] = str(self.d.get("source") or inferred["source"])
        out["features"] = to_type_tree(features)
        out["splits"] = self._splits(inferred.get("splits"))
        out["cameras"] = self._cameras("cameras", required=True)
        out["depth"] = self._cameras("depth", required=False)
        out["state_keys"], out["state_size"] = self._state_keys()
        out["state_encoding"] = self._choice("state_encoding", STATE_ENCODINGS, None)
        out["action_encoding"] = self._choice("action_encoding", ACTION_ENCODINGS, "EEF_POS")
        out["language_key"] = self._language()
        out["episode_id_key"] = self._episode_id()
        out["control_hz"] = self._hz()
        out["action"], out["constant_action_dims"] = self._action()
        out["episode_filters"] = self._filters()
        out["_file"] = self.path
        return out

    # -- identity
    def _name(self) -> str:
        name = self.d.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.err("name", f"expected a dataset name of [a-z0-9_] (it names the data directory), got {name!r}")
        stem = os.path.splitext(os.path.basename(self.path))[0]
        if self.path.endswith((".yaml", ".yml")) and stem != name:
            raise self.err("name", f"'{name}' differs from the file name '{stem}'; they must be equal")
        if _is_builtin(name):
            raise self.err("name", f"'{name}' is a built-in OXE dataset; built-in names cannot be shadowed, "
                                   "choose another name")
        return name

    def _version(self, inferred: str | None) -> str:
        version = str(self.d.get("version") or inferred or "1.0.0")
        if not _VERSION.match(version):
            raise self.err("version", f"expected MAJOR.MINOR.PATCH (e.g. 1.0.0), got {version!r}")
        return version

    def _features(self) -> tuple[dict, dict]:
        has_f, has_i = "features" in self.d, "infer_from" in self.d
        if has_f == has_i:
            raise self.err("features", "give exactly one of 'features' (type-string tree) or 'infer_from' "
                                       "(a TFDS builder directory)")
        inferred: dict = {}
        if has_i:
            from pipeline.data.io.builder import open_builder

            try:
                info = open_builder(str(self.d["infer_from"]))
            except UserError as e:
                raise self.err("infer_from", str(e)) from None
            tree = info.features
            inferred = {"version": info.version, "source": info.url,
                        "splits": {s: sum(x.num_episodes for x in shards) for s, shards in info.splits.items()}}
        else:
            tree = self.d["features"]
            if not isinstance(tree, dict):
                raise self.err("features", "expected a mapping of feature names to type strings")
            try:
                tree = parse_type_tree(tree)
            except UserError as e:
                raise self.err("features", str(e)) from None
        if not isinstance(tree.get("steps"), SequenceSpec):
            raise self.err("features", "expected a 'steps' mapping (the RLDS step features)")
        return tree, inferred

    def _splits(self, inferred: dict | None) -> dict:
        splits = self.d.get("splits", inferred or {"train": 0})
        if not isinstance(splits, dict) or not splits or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in splits.values()):
            raise self.err("splits", f"expected a mapping split -> episode count >= 0, got {splits!r}")
        return {str(k): int(v) for k, v in splits.items()}

    # -- layout
    def _cameras(self, key: str, *, required: bool) -> dict:
        raw = self.d.get(key) or {}
        if not isinstance(raw, dict):
            raise self.err(key, f"expected a mapping with keys {', '.join(schema.CAMERA_SLOTS)}")
        images = sorted(k for k, v in self.obs.items() if isinstance(v, FeatureSpec) and v.kind == "image"
                        or isinstance(v, FeatureSpec) and key == "depth" and len(v.shape) >= 2)
        out = {}
        for slot in raw:
            if slot not in schema.CAMERA_SLOTS:
                raise self.err(f"{key}.{slot}", f"unknown camera slot; expected one of {', '.join(schema.CAMERA_SLOTS)}")
        for slot in schema.CAMERA_SLOTS:
            value = raw.get(slot)
            if value is not None and (not isinstance(value, str) or value not in images):
                raise self.err(f"{key}.{slot}", f"{value!r} is not an image feature of steps/observation; "
                                                f"expected one of {', '.join(images) or '(none)'} or null")
            out[slot] = value
        if required and out["primary"] is None:
            raise self.err(f"{key}.primary", f"required: the main camera, one of {', '.join(images) or '(none)'}")
        return out

    def _state_keys(self) -> tuple[list, int]:
        keys = self.d.get("state_keys")
        numeric = sorted(k for k, v in self.obs.items() if isinstance(v, FeatureSpec) and kind(v) == "num")
        if not isinstance(keys, list) or not keys:
            raise self.err("state_keys", "expected a non-empty list of steps/observation keys, 'key[a:b]' slices "
                                         f"or null (one 0.0); numeric keys here: {', '.join(numeric) or '(none)'}")
        size = 0
        for i, key in enumerate(keys):
            if key is None:
                size += 1
                continue
            m = SLICE.match(key) if isinstance(key, str) else None
            base = m.group(1) if m else key
            if not isinstance(base, str) or base not in numeric:
                raise self.err(f"state_keys[{i}]", f"{key!r} is not a numeric feature of steps/observation; "
                                                   f"expected one of {', '.join(numeric) or '(none)'}, a slice "
                                                   "like 'key[0:6]', or null")
            n = numel(self.obs[base])
            lo, hi = (int(m.group(2) or 0), int(m.group(3) or n)) if m else (0, n)
            if not 0 <= lo < hi <= n:
                raise self.err(f"state_keys[{i}]", f"slice [{lo}:{hi}] is outside the {n} values of '{base}'")
            size += hi - lo
        return list(keys), size

    def _choice(self, key: str, choices: tuple, default: str | None) -> str:
        value = self.d.get(key, default)
        if value not in choices:
            raise self.err(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def _leaf(self, path: str) -> FeatureSpec | None:
        try:
            leaf = lookup(self.features, path) if not path.startswith("steps/") else lookup(self.steps, path[6:])
        except KeyError:
            return None
        return leaf if isinstance(leaf, FeatureSpec) else None

    def _step_leaves(self) -> list[str]:
        from pipeline.data.io.features import flatten_spec

        return [k for k, f in flatten_spec(self.features).items() if f.in_sequence]

    def _language(self) -> str | None:
        default = "steps/language_instruction" if self._leaf("steps/language_instruction") else None
        key = self.d.get("language_key", default)
        if key is None:
            return None
        leaf = self._leaf(key) if isinstance(key, str) and key.startswith("steps/") else None
        if leaf is None or not (kind(leaf) == "bytes" or np.dtype(leaf.dtype).kind in "iu"):
            text = [k for k in self._step_leaves() if kind(self._leaf(k)) == "bytes"
                    and self._leaf(k).kind != "image"]
            raise self.err("language_key", f"{key!r} is not a text feature under steps/; expected one of "
                                           f"{', '.join(text) or '(none)'} or null (unlabeled)")
        return key

    def _episode_id(self) -> str | None:
        default = "episode_metadata/file_path" if self._leaf("episode_metadata/file_path") else None
        key = self.d.get("episode_id_key", default)
        if key is not None and (not isinstance(key, str) or key.startswith("steps") or self._leaf(key) is None):
            raise self.err("episode_id_key", f"{key!r} is not an episode-level feature (e.g. episode_metadata/file_path)")
        return key

    def _hz(self) -> float | None:
        hz = self.d.get("control_hz")
        if hz is not None and (isinstance(hz, bool) or not isinstance(hz, (int, float)) or hz <= 0):
            raise self.err("control_hz", f"expected a positive number or null, got {hz!r}")
        return None if hz is None else float(hz)

    # -- action
    def _action(self) -> tuple[dict, dict]:
        raw = self.d.get("action")
        if not isinstance(raw, dict):
            raise self.err("action", f"expected a mapping with keys {', '.join(_ACTION_KEYS)}")
        for k in raw:
            if k not in _ACTION_KEYS:
                raise self.err(f"action.{k}", f"unknown key; expected one of {', '.join(_ACTION_KEYS)}")
        sources = raw.get("key", "action")
        sources = [sources] if isinstance(sources, str) else sources
        numeric = [k[6:] for k in self._step_leaves()
                   if (kind(self._leaf(k)) == "num" or self._leaf(k).encoding == "zlib") and self._leaf(k).dtype != "bool"]
        if not isinstance(sources, list) or not sources:
            raise self.err("action.key", "expected a step feature path (e.g. action) or a list of them")
        n = 0
        for src in sources:
            if src not in numeric:
                raise self.err("action.key", f"{src!r} is not a numeric step feature; expected one of {', '.join(numeric)}")
            n += numel(self._leaf("steps/" + src))
        steps = self._steps(raw.get("steps") or [], "action.steps")
        gripper = raw.get("gripper", "absolute")
        if gripper not in ub.GRIPPER_CONVENTIONS:
            raise self.err("action.gripper", f"expected one of {', '.join(ub.GRIPPER_CONVENTIONS)}, got {gripper!r}")
        program = steps + [{"op": op, **block_defaults(op)} for op in ub.GRIPPER_CONVENTIONS[gripper]]
        constant: dict[int, float] = {}
        for i, st in enumerate(program):
            label = f"action.steps[{i}]" if i < len(steps) else "action.gripper"
            try:
                n_out = ub.BLOCKS[st["op"]].dims(n, st)
            except ValueError as e:
                raise self.err(label, f"{st['op']}: {e}") from None
            constant = self._constant(st, n, constant)
            if st["op"] == "bridge_relabel":
                leaf = self._leaf("steps/" + str(st["state"]))
                if leaf is None or numel(leaf) < 6:
                    raise self.err(label, f"bridge_relabel state={st['state']!r}: expected a step feature with >= 6 values")
            n = n_out
        if n != schema.ACTION_DIM:
            raise self.err("action", f"the steps produce {n} action columns, expected 7 (dx,dy,dz,droll,dpitch,dyaw,"
                                     "gripper); add select/quat_to_euler/zero_pad_rot/pad_to7 steps")
        return {"key": sources, "steps": steps, "gripper": gripper}, constant

    @staticmethod
    def _constant(st: dict, n: int, constant: dict) -> dict:
        if st["op"] == "zero_pad_rot":
            return {**{k + 3 if k >= 3 else k: v for k, v in constant.items()}, 3: 0.0, 4: 0.0, 5: 0.0}
        if st["op"] == "pad_to7":
            return {**constant, **{d: 0.0 for d in range(n, 7)}}
        if st["op"] in ("select", "quat_to_euler", "axis_angle_to_euler", "bridge_relabel"):
            return {}
        return constant

    def _steps(self, raw: Any, key: str) -> list[dict]:
        if not isinstance(raw, list):
            raise self.err(key, "expected a list of steps like {op: select, dims: [0, 1, 2, 3, 4, 5, 6]}")
        out = []
        for i, st in enumerate(raw):
            label = f"{key}[{i}]"
            st = {"op": st} if isinstance(st, str) else st
            if not isinstance(st, dict) or "op" not in st:
                raise self.err(label, "expected a block name or a mapping with 'op' and its parameters")
            op = st["op"]
            if op not in ub.BLOCKS:
                raise self.err(label, f"unknown building block {op!r}; known: {', '.join(ub.BLOCKS)}")
            params = ub.BLOCKS[op].params
            for k, v in st.items():
                if k == "op":
                    continue
                if k not in params:
                    raise self.err(f"{label}.{k}", f"{op} has no parameter {k!r}; expected {', '.join(params) or 'none'}")
                if isinstance(v, bool) and params[k].kind is not bool or not isinstance(v, params[k].kind):
                    raise self.err(f"{label}.{k}", f"{op}.{k}: expected {_type_name(params[k].kind)}, got {v!r}")
            missing = [k for k, p in params.items() if p.default is ub.REQUIRED and k not in st]
            if missing:
                raise self.err(label, f"{op} needs parameter(s) {', '.join(missing)}")
            out.append({"op": op, **block_defaults(op), **{k: v for k, v in st.items() if k != "op"}})
        return out

    def _filters(self) -> list[dict]:
        raw = self.d.get("episode_filters") or []
        if not isinstance(raw, list):
            raise self.err("episode_filters", "expected a list like [{op: success, key: success}]")
        out = []
        for i, f in enumerate(raw):
            label = f"episode_filters[{i}]"
            if not isinstance(f, dict) or f.get("op") not in _FILTERS:
                raise self.err(label, f"expected {{op: NAME, key: ...}} with NAME one of {', '.join(_FILTERS)}")
            key = f.get("key")
            leaf = self._leaf(key) if isinstance(key, str) and not key.startswith("steps") else None
            if leaf is None or set(f) - {"op", "key"}:
                raise self.err(f"{label}.key", f"{key!r}: expected an episode-level feature (not under steps/)")
            out.append({"op": f["op"], "key": key})
        return out


def _type_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def close_user_names(name: str) -> list[str]:
    """User dataset names close to ``name`` (for 'did you mean')."""
    return difflib.get_close_matches(name, user_datasets(), n=3, cutoff=0.5)
