"""``vla dataset register | list | show``: bring your own RLDS dataset without writing Python.

    vla dataset register src=/data/my_robot/1.0.0 cameras.primary=cam_front cameras.wrist=cam_hand \\
        state_keys=[ee_pose,gripper_width] state_encoding=POS_QUAT action.gripper=relative
    vla dataset list [user_only=true]
    vla dataset show my_robot

``register`` reads the builder's ``features.json``, builds a registry entry (schema in
:mod:`pipeline.data.oxe.user_registry`), validates it against the data by reading and standardizing
the first episode(s) (action [T, 7], finite, gripper in [0, 1], proprio width), then writes
``dataset_mixtures/registry/<name>.yaml`` atomically (an existing file only with ``force=true``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from pipeline import fs
from pipeline.config import MISSING, helpfield
from pipeline.errors import UserError

__all__ = ["CameraConfig", "ActionConfig", "RegisterConfig", "ListConfig", "ShowConfig",
           "build_entry", "check_against_data", "register", "run_register", "run_list", "run_show"]


@dataclass(kw_only=True)
class CameraConfig:
    primary: str = helpfield("", "observation image key of the main camera ('' = the only image, if one)")
    secondary: str = helpfield("", "second third-person camera ('' = none)")
    wrist: str = helpfield("", "wrist camera ('' = none)")


@dataclass(kw_only=True)
class ActionConfig:
    key: Any = helpfield("action", "raw action feature below steps/ (a list is concatenated)")
    steps: Any = helpfield([], "building blocks, e.g. [{op: quat_to_euler, at: 3}] (vla dataset list blocks=true)")
    gripper: str = helpfield("absolute", "gripper convention: absolute|inverted|relative|signed|inverted_signed|"
                                         "continuous|continuous_inverted")


@dataclass(kw_only=True)
class RegisterConfig:
    src: str = helpfield(MISSING, "raw TFDS builder directory (<root>/<name> or <root>/<name>/<version>; local or gs://)")
    name: str = helpfield("", "dataset name ('' = the builder's name); curate reads <source>/<name>/<version>/")
    cameras: CameraConfig = helpfield(CameraConfig(), "camera slot -> observation image key")
    state_keys: Any = helpfield([], "observation keys for proprio ('key[a:b]' slices, null = one 0.0); [] = [null]")
    state_encoding: str = helpfield("NONE", "NONE|POS_EULER|POS_QUAT|JOINT|JOINT_BIMANUAL")
    action_encoding: str = helpfield("EEF_POS", "EEF_POS|EEF_R6 (trainable), JOINT_POS|JOINT_POS_BIMANUAL")
    language_key: str = helpfield("auto", "steps/... text feature, 'auto' (steps/language_instruction if any) or 'none'")
    episode_id_key: str = helpfield("auto", "episode-level id feature, 'auto' (episode_metadata/file_path if any) or 'none'")
    action: ActionConfig = helpfield(ActionConfig(), "action standardization")
    episode_filters: Any = helpfield([], "e.g. [{op: success, key: episode_metadata/success}]")
    control_hz: float = helpfield(0.0, "control frequency (0 = unknown)")
    description: str = helpfield("", "one line for `vla dataset list`")
    out: str = helpfield("", "registry file or directory ('' = the first VLA_DATASET_REGISTRY folder, else "
                                 "the checkout's dataset_mixtures/registry/)")
    force: bool = helpfield(False, "overwrite an existing registry file")
    check_episodes: int = helpfield(1, "episodes read and standardized to validate the entry (0 = skip)")

    def __post_init__(self) -> None:
        if self.check_episodes < 0:
            raise ValueError(f"check_episodes={self.check_episodes}: expected >= 0")


@dataclass(kw_only=True)
class ListConfig:
    user_only: bool = helpfield(False, "list only user-registered datasets")
    blocks: bool = helpfield(False, "also list the action building blocks and gripper conventions")


@dataclass(kw_only=True)
class ShowConfig:
    name: str = helpfield(MISSING, "dataset name")


# ------------------------------------------------------------------------------------ register
def _auto(value: str, default: str | None) -> str | None:
    if value == "auto":
        return default
    return None if value.lower() in ("", "none", "null") else value


def _leaf_paths(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _leaf_paths(v, f"{prefix}{k}/") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def build_entry(cfg: RegisterConfig, info) -> dict:
    """Registry entry (plain YAML data) from the register config and the builder ``info``."""
    from pipeline.data.io.features import to_type_tree

    features = to_type_tree(info.features)
    leaves = set(_leaf_paths(features))
    obs = features["steps"].get("observation", {}) if isinstance(features.get("steps"), dict) else {}
    images = [k for k, v in obs.items() if isinstance(v, str) and v.startswith("Image")]
    cameras = {"primary": cfg.cameras.primary or (images[0] if len(images) == 1 else None),
               "secondary": cfg.cameras.secondary or None, "wrist": cfg.cameras.wrist or None}
    entry: dict[str, Any] = {
        "name": cfg.name or info.name, "version": info.version, "description": cfg.description,
        "source": info.url, "features": features,
        "splits": {s: sum(x.num_episodes for x in shards) for s, shards in info.splits.items()} or {"train": 0},
        "cameras": cameras, "state_keys": list(cfg.state_keys) or [None],
        "state_encoding": cfg.state_encoding, "action_encoding": cfg.action_encoding,
        "language_key": _auto(cfg.language_key, "steps/language_instruction"
                              if "steps/language_instruction" in leaves else None),
        "episode_id_key": _auto(cfg.episode_id_key, "episode_metadata/file_path"
                                if "episode_metadata/file_path" in leaves else None),
        "control_hz": cfg.control_hz or None,
        "action": {"key": cfg.action.key, "steps": list(cfg.action.steps), "gripper": cfg.action.gripper},
        "episode_filters": list(cfg.episode_filters),
    }
    return entry


def _target(cfg: RegisterConfig, name: str) -> str:
    if cfg.out:
        return cfg.out if cfg.out.endswith((".yaml", ".yml")) else fs.join(cfg.out, f"{name}.yaml")
    return os.path.join(default_registry_dir(), f"{name}.yaml")


def default_registry_dir() -> str:
    """Where ``register`` writes without ``out=``: the first ``VLA_DATASET_REGISTRY`` folder (later
    commands look there), else the built-in registry when it is a checkout's folder. Inside an
    installed package it is refused: a wheel's files are not the place for user entries."""
    from pipeline.data.oxe.user_registry import ENV_VAR, REGISTRY_DIR, registry_sources

    extra = [p for p in registry_sources()[1:] if not p.endswith((".yaml", ".yml"))]
    if extra:
        return extra[0]
    if "site-packages" in REGISTRY_DIR.split(os.sep) or "dist-packages" in REGISTRY_DIR.split(os.sep):
        raise UserError(f"dataset register: no out= and {ENV_VAR} is not set; the built-in registry "
                        f"({REGISTRY_DIR}) belongs to the installed package. Set {ENV_VAR}=DIR (later "
                        f"commands read entries from there) or pass out=DIR")
    return REGISTRY_DIR


def check_against_data(spec, info, episodes: int) -> dict:
    """Read + standardize the first ``episodes`` episodes; UserError naming the problem. Returns a summary."""
    from pipeline.data import schema
    from pipeline.data.io.rlds_reader import read_episodes

    split = "train" if "train" in info.splits else next(iter(info.splits), None)
    shards = [s for s in info.splits.get(split, []) if s.num_episodes] if split else []
    if not shards:
        raise UserError(f"{info.url}: no episodes to check the entry against (splits: {', '.join(info.splits) or 'none'})")
    seen: list[dict] = []
    for shard in shards:
        for raw in read_episodes(shard.url, info.features, dataset=spec.name):
            where = f"{fs.basename(shard.url)} episode {len(seen)}"
            try:
                ep = spec.standardize(raw)
            except UserError as e:
                raise UserError(f"{where} does not standardize: {e}") from None
            except Exception as e:  # a block failing on real data: name it
                raise UserError(f"{where} does not standardize: {type(e).__name__}: {e}") from None
            problems = schema.validate_episode(ep)
            action = np.asarray(ep["steps"]["action"])
            grip = action[:, schema.GRIPPER_DIM] if action.ndim == 2 and action.shape[1] == 7 else np.zeros(0)
            if grip.size and ((grip < 0) | (grip > 1)).any():
                problems.append(f"gripper (action dim 6) outside [0, 1]: {sorted(set(np.round(grip, 3).tolist()))[:6]}; "
                                "choose another action.gripper convention")
            if problems:
                raise UserError(f"{where} fails the canonical schema: {problems[0]}")
            seen.append(ep)
            if len(seen) >= episodes:
                break
        if len(seen) >= episodes:
            break
    actions = np.concatenate([e["steps"]["action"] for e in seen])
    return {"split": split, "episodes": len(seen), "steps": len(actions), "action_min": actions.min(0),
            "action_max": actions.max(0), "gripper_values": sorted(set(actions[:, 6].round(3).tolist())),
            "proprio_dim": int(seen[0]["steps"]["proprio"].shape[1]),
            "instruction": next((s for e in seen for s in e["steps"]["language_instruction"] if s), "")}


def register(cfg: RegisterConfig) -> tuple[str, dict, dict | None]:
    """Validate and write the entry; returns (path, resolved entry, data check summary or None)."""
    from pipeline.data.io.builder import open_builder
    from pipeline.data.oxe.user_registry import dump_entry, parse_entry, spec_from_entry, user_path

    info = open_builder(cfg.src)
    entry = build_entry(cfg, info)
    path = _target(cfg, str(entry["name"]))
    if fs.exists(path) and not cfg.force:
        raise UserError(f"{path} exists; pass force=true to overwrite it (nothing was written)")
    try:
        other = user_path(str(entry["name"]))
    except UserError:
        other = None
    if other and os.path.abspath(other) != os.path.abspath(fs.get_fs(path)[1] if not fs.is_remote(path) else path):
        raise UserError(f"dataset '{entry['name']}' is already registered in {other}; choose another name or edit that file")
    text = dump_entry(entry)
    summary = None
    try:
        resolved = parse_entry(text, path, with_lines=False)
        if cfg.check_episodes:
            summary = check_against_data(spec_from_entry(resolved), info, cfg.check_episodes)
    except UserError as e:
        raise UserError(f"{e} (nothing was written)") from None
    header = f"# registered by `vla dataset register` from {info.url}\n"
    fs.makedirs(os.path.dirname(path) if not fs.is_remote(path) else path.rsplit("/", 1)[0])
    fs.write_text(path, header + text)
    return path, resolved, summary


def _fmt(values) -> str:
    return " ".join(f"{float(v) + 0.0:.3g}" for v in values)


def run_register(cfg: RegisterConfig) -> int:
    path, entry, summary = register(cfg)
    cams = ", ".join(f"{k}={v}" for k, v in entry["cameras"].items() if v)
    print(f"registered {entry['name']} {entry['version']} -> {path}")
    print(f"  cameras: {cams}; proprio: {entry['state_size']} dims from {entry['state_keys']} ({entry['state_encoding']})")
    steps = [s["op"] for s in entry["action"]["steps"]]
    print(f"  action: {entry['action']['key']} -> {steps or 'as stored'} + gripper {entry['action']['gripper']} "
          f"({entry['action_encoding']}); language: {entry['language_key']}")
    if summary:
        print(f"  checked {summary['episodes']} episode(s) of split {summary['split']} ({summary['steps']} steps): "
              f"action min [{_fmt(summary['action_min'])}] max [{_fmt(summary['action_max'])}], "
              f"gripper values {summary['gripper_values'][:6]}, instruction {summary['instruction']!r}")
    if fs.basename(os.path.dirname(entry.get("source", "").rstrip("/"))) != entry["name"]:
        print(f"  note: curate reads <source>/{entry['name']}/{entry['version']}/; place the data there")
    return 0


# ------------------------------------------------------------------------------------ list / show
def run_list(cfg: ListConfig) -> int:
    from pipeline.data.oxe import get_spec, list_datasets
    from pipeline.data.oxe import user_blocks as ub
    from pipeline.data.oxe.user_registry import user_datasets, user_path

    user, builtin = set(user_datasets()), set(list_datasets(user=False))
    names = sorted(user) if cfg.user_only else sorted(builtin | user)
    rows = [("dataset", "origin", "version", "action", "cameras (p/s/w)", "note")]
    for name in names:
        origin = "built-in" if name in builtin else "user"
        try:
            spec = get_spec(name)
            note = "magic soup+" if spec.in_magic_soup_plus else ""
            if name in user:
                note = (f"INVALID user file {user_path(name)}: built-in names cannot be shadowed"
                        if name in builtin else str(user_path(name)))
            cams = "/".join(spec.cameras[s] or "-" for s in ("primary", "secondary", "wrist"))
            rows.append((name, origin, spec.version, spec.action_encoding, cams, note))
        except UserError as e:
            rows.append((name, origin, "?", "?", "?", f"INVALID: {e}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    n_user = sum(r[1] == "user" for r in rows[1:])
    print(f"{len(rows) - 1} datasets ({n_user} user-registered)")
    if cfg.blocks:
        print("\naction building blocks ({op: NAME, param: value}):\n" + ub.block_help())
        print("\naction.gripper conventions:\n" + "\n".join(
            f"  {k}: {', '.join(v) or 'as stored (1 open, 0 closed)'}" for k, v in ub.GRIPPER_CONVENTIONS.items()))
    return 0


def run_show(cfg: ShowConfig) -> int:
    from pipeline.data.oxe import get_spec
    from pipeline.data.oxe.user_registry import user_entry

    spec = get_spec(cfg.name)
    entry = user_entry(spec.name)
    if entry is not None:
        body = {k: v for k, v in entry.items() if k != "_file"}
        print(f"# user dataset, from {entry['_file']}")
    else:
        body = {"name": spec.name, "version": spec.version, "features": spec.features, "splits": spec.splits,
                "cameras": spec.cameras, "depth": spec.depth, "state_keys": list(spec.state_keys),
                "state_size": spec.state_size, "state_encoding": spec.state_encoding,
                "action_encoding": spec.action_encoding, "language_key": spec.language_key,
                "control_hz": spec.control_hz, "in_magic_soup_plus": spec.in_magic_soup_plus,
                "episode_filters": [r for r, _ in spec.episode_filters],
                "frame_filter": spec.frame_filter[0] if spec.frame_filter else None,
                "known_issues": list(spec.known_issues)}
        print("# built-in OXE dataset")
    print(yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=110), end="")
    return 0
