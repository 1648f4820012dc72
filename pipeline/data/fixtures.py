"""Fixture datasets: small, learnable OXE-format TFDS builder directories (``vla fixture``).

For every requested dataset this writes ``<out>/<name>/<version>/`` with the same feature structure
as the real dataset (``get_spec(name).features``: keys, shapes, dtypes, image encodings, episode
metadata, version and split names), filled with episodes of the reach-and-pick scene of
:mod:`pipeline.data.scene`:

1. ``scene.plan_scene`` draws a target block and an effector path; the canonical plan
   (``action``, ``proprio_xyz``, ``proprio_rpy``, ``gripper``, ``instruction``) follows from it.
2. ``spec.synthesize_raw_steps(plan, rng)`` turns the plan into the dataset's own raw conventions
   (relative grippers, quaternions, zlib bytes, an extra bridge step, ...), so reading the fixture
   back through ``spec.standardize`` exercises the real standardization.
3. Every other feature is filled from its type string: cameras are rendered (primary = the labelled
   top view; other cameras flipped / shifted / zoomed views), depth maps are smooth surfaces, the
   rest (embeddings, rewards, extra observations, episode metadata) plausible seeded values.

Same ``seed`` -> byte-identical shards. Each dataset's content depends only on (seed, name, episode
index), not on which other datasets are generated.
"""

from __future__ import annotations

import io
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import fs
from pipeline.config import MISSING, helpfield
from pipeline.data import scene as sc
from pipeline.data.features import FeatureSpec, SequenceSpec, parse_type_tree

__all__ = [
    "FixtureConfig",
    "run_fixture",
    "generate_episode",
    "generate_dataset",
    "write_fixture_dataset",
    "resolve_datasets",
    "parse_steps",
    "as_name_list",
    "split_counts",
    "encode_image",
]

_MIXTURE = "oxe_magic_soup_plus"
_JPEG_QUALITY = 90


@dataclass(kw_only=True)
class FixtureConfig:
    out: str = helpfield(MISSING, "output root (local dir or gs://); writes <out>/<name>/<version>/")
    datasets: Any = helpfield(["all"], f"list of dataset names, or all (= the 27 of {_MIXTURE})")
    episodes: int = helpfield(4, "episodes per dataset over all splits (most in train, >= 1 per split)")
    steps: str = helpfield("12-20", "canonical steps per episode: 'MIN-MAX' or one number")
    shards: int = helpfield(2, "shards per split (fewer when a split has fewer episodes)")
    seed: int = helpfield(0, "random seed; same seed -> byte-identical shards")
    image_size: int = helpfield(0, "0 = spec image shapes; N = write every Image feature as NxN (smaller files)")

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes}: expected >= 1")
        if self.shards < 1:
            raise ValueError(f"shards={self.shards}: expected >= 1")
        if self.image_size < 0 or 0 < self.image_size < 16:
            raise ValueError(f"image_size={self.image_size}: expected 0 (off) or >= 16")
        parse_steps(self.steps)
        self.datasets = as_name_list(self.datasets, "datasets")
        if not self.datasets:
            raise ValueError("datasets=[]: name at least one dataset, or 'all'")


# ----------------------------------------------------------------------------------------- config


def as_name_list(value: Any, key: str) -> list[str]:
    """A list of names from a list or a comma-separated string ('all', 'a,b')."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}={value!r}: expected a list of names, e.g. {key}=[bridge_orig,kuka] or {key}=all")
    return [v.strip() for v in value]


def parse_steps(text: str | int) -> tuple[int, int]:
    """'12-20' -> (12, 20); '16' -> (16, 16). ValueError naming the key otherwise."""
    text = str(text).strip()
    lo, sep, hi = text.partition("-")
    try:
        bounds = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        raise ValueError(f"steps={text!r}: expected 'MIN-MAX' (e.g. 12-20) or one number") from None
    if bounds[0] < 4 or bounds[1] < bounds[0]:
        raise ValueError(f"steps={text!r}: expected 4 <= MIN <= MAX")
    return bounds


def resolve_datasets(names: list[str]) -> list[str]:
    """Expand 'all' to the magic-soup-plus datasets; registry names are checked (UserError)."""
    from pipeline.data.oxe import get_spec, list_datasets

    out: list[str] = []
    for name in names:
        expanded = list_datasets(mixture_only=True) if name == "all" else [get_spec(name).name]
        out += [n for n in expanded if n not in out]
    return out


def split_counts(splits: dict, episodes: int) -> dict[str, int]:
    """Episodes per split: every split gets at least one (tfds cannot read an empty split), other
    splits ~10% each, train the rest (so the total exceeds ``episodes`` only when it is < #splits)."""
    names = list(splits) or ["train"]
    main = "train" if "train" in names else names[0]
    counts = {n: max(1, episodes // 10) for n in names if n != main}
    counts[main] = max(1, episodes - sum(counts.values()))
    return {n: counts[n] for n in names}


# ------------------------------------------------------------------------------------ value fills


def encode_image(array: np.ndarray, spec: FeatureSpec) -> bytes:
    """Encode like tfds: jpeg or png (None = png); float32 1-channel = png of the bytes as RGBA."""
    from PIL import Image

    arr = np.asarray(array)
    fmt = "JPEG" if spec.image_format == "jpeg" else "PNG"
    if spec.dtype == "float32":
        arr = np.ascontiguousarray(arr.astype("<f4")).reshape(arr.shape[0], arr.shape[1], 1).view(np.uint8)
        pil = Image.fromarray(arr)  # (H, W, 4) uint8 -> RGBA
    elif spec.dtype == "uint16":
        pil = Image.fromarray(arr.reshape(arr.shape[0], arr.shape[1]).astype(np.uint16))  # -> I;16
    elif arr.ndim == 3 and arr.shape[2] == 1:
        pil = Image.fromarray(arr[..., 0].astype(np.uint8))  # -> L
    else:
        pil = Image.fromarray(arr.astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "JPEG":
        pil.save(buf, format=fmt, quality=_JPEG_QUALITY)
    else:
        pil.save(buf, format=fmt, compress_level=1)
    return buf.getvalue()


def _depth_values(scene: sc.Scene, t: int, spec: FeatureSpec) -> np.ndarray:
    shape = tuple(d or 8 for d in spec.shape)
    depth = sc.render_depth(scene, t, shape)
    if np.dtype(spec.dtype).kind in "iu" and spec.kind == "image":
        return np.rint(depth * 1000.0).astype(spec.dtype)  # millimetres (PNG-encoded)
    if np.dtype(spec.dtype).kind in "iu":
        # centimetres: values stay < 128, the one-byte varint fast path of the TFRecord encoder
        return np.clip(np.rint(depth * 100.0), 0, 127).astype(spec.dtype)
    return depth.astype(spec.dtype)


def _is_depth(path: str, spec: FeatureSpec) -> bool:
    shape = tuple(spec.shape)
    if spec.kind == "image":
        return len(shape) == 3 and shape[2] == 1
    return "depth" in path.rsplit("/", 1)[-1] and len(shape) >= 2 and min(d or 0 for d in shape[:2]) >= 8


def _random_values(rng: np.random.Generator, spec: FeatureSpec, lead: tuple[int, ...]) -> np.ndarray:
    shape = lead + tuple(d or 1 for d in spec.shape)
    kind = np.dtype(spec.dtype).kind if spec.dtype != "string" else "S"
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind in "iu":
        return rng.integers(0, 4, size=shape).astype(spec.dtype)
    if kind == "f":
        return rng.normal(0.0, 0.1, size=shape).astype(spec.dtype)
    return np.full(shape, b"fixture", object)


def _step_value(path: str, spec: FeatureSpec, ctx: _Context) -> np.ndarray:
    """A [T]-leading value for a step feature the transform does not read."""
    t, leaf = ctx.num_raw, path.rsplit("/", 1)[-1]
    if leaf in ("is_first", "is_last", "is_terminal"):
        flags = np.zeros(t, bool)
        flags[0 if leaf == "is_first" else -1] = True
        return flags
    if leaf == "reward":
        return (np.arange(t) == t - 1).astype(spec.dtype)
    if leaf == "discount":
        return np.ones(t, spec.dtype)
    if leaf == "terminate_episode":
        value = np.zeros((t,) + tuple(spec.shape), spec.dtype)
        value.reshape(t, -1)[-1, 0] = 1
        return value
    if spec.kind == "text" or spec.dtype == "string":
        text = ctx.instruction if "instruction" in leaf else f"{leaf} {ctx.index}"
        return _object_array([text.encode("utf-8")] * t)
    if "embedding" in leaf and spec.dtype.startswith("float"):
        vec = ctx.rng.normal(size=tuple(spec.shape)).astype(np.float32)
        return np.broadcast_to(vec / np.linalg.norm(vec), (t,) + vec.shape).astype(spec.dtype)
    values = _random_values(ctx.rng, spec, (t,))
    if spec.encoding != "none":
        return _object_array([_encode_tensor(v, spec) for v in values])
    return values


def _episode_value(path: str, spec: FeatureSpec, ctx: _Context) -> Any:
    leaf = path.rsplit("/", 1)[-1]
    if spec.kind == "text" or spec.dtype == "string":
        if "path" in leaf or "folder" in leaf:
            text = f"/fixtures/{ctx.name}/{ctx.split}/episode_{ctx.index:06d}"
        elif "instruction" in leaf or "task" in leaf:
            text = ctx.instruction
        elif leaf == "episode_id":
            text = f"{ctx.name}-{ctx.index:06d}"
        else:
            text = f"{leaf} {ctx.index}"
        return text.encode("utf-8")
    if spec.dtype == "bool" and ("success" in leaf or leaf.startswith("has_")):
        return np.bool_(True)
    if leaf == "episode_id" and np.dtype(spec.dtype).kind in "iu":
        return np.array(ctx.index, spec.dtype)
    value = _random_values(ctx.rng, spec, ())
    return value if value.shape else value[()]


def _encode_tensor(value: np.ndarray, spec: FeatureSpec) -> bytes:
    data = np.ascontiguousarray(np.asarray(value, np.dtype(spec.dtype).newbyteorder("<"))).tobytes()
    return zlib.compress(data) if spec.encoding == "zlib" else data


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), object)
    out[:] = items
    return out


# ------------------------------------------------------------------------------------- episodes


@dataclass
class _Context:
    name: str
    split: str
    index: int
    num_raw: int
    instruction: str
    rng: np.random.Generator


def _walk(tree: dict, prefix: tuple = (), in_seq: bool = False):
    """Yield ``(path_tuple, FeatureSpec, in_sequence)`` for every leaf (keys may contain '/')."""
    for key, value in tree.items():
        if isinstance(value, SequenceSpec):
            yield from _walk(value.feature, prefix + (key,), True)
        elif isinstance(value, dict):
            yield from _walk(value, prefix + (key,), in_seq)
        else:
            yield prefix + (key,), value, in_seq


def _find(tree: dict, path: tuple) -> Any:
    """Value at ``path`` in a nested dict whose keys may themselves contain '/' (KeyError if absent)."""
    from pipeline.data.oxe.spec import lookup

    return lookup(tree, "/".join(path))


def _put(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _plan(scene: sc.Scene, rng: np.random.Generator) -> dict:
    actions = sc.scene_actions(scene)
    t = scene.num_steps
    xy = (scene.effector[:t] - sc.GRID / 2).astype(np.float32) * sc.STEP_M
    xyz = np.concatenate([xy, scene.height[:t, None]], axis=1).astype(np.float32)
    rpy = np.broadcast_to(rng.uniform(-0.3, 0.3, size=3).astype(np.float32), (t, 3)).copy()
    return {"action": actions, "proprio_xyz": xyz, "proprio_rpy": rpy,
            "gripper": actions[:, 6].copy(), "instruction": scene.instruction}


def _coerce(path: str, value: Any, spec: FeatureSpec, n: int, name: str) -> np.ndarray:
    if spec.kind in ("image", "text") or spec.dtype == "string" or spec.encoding != "none":
        arr = _object_array([v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value])
    else:
        arr = np.asarray(value).astype(spec.dtype)
        want = (n,) + tuple(spec.shape)
        if arr.shape != want and arr.size == int(np.prod(want)):
            arr = arr.reshape(want)
        if arr.shape != want:
            raise AssertionError(f"{name}: synthesized {path} has shape {arr.shape}, features say {want}")
    if len(arr) != n:
        raise AssertionError(f"{name}: synthesized {path} has {len(arr)} steps, expected {n}")
    return arr


def _views_by_key(spec, raw_with_markers: dict) -> tuple[dict[str, str], np.ndarray]:
    """Standardize a raw episode whose images are b"key@index" markers: which raw key feeds which
    canonical slot (-> the view to render there), and the raw index behind each canonical step."""
    ep = spec.standardize(raw_with_markers)
    views: dict[str, str] = {}
    index = None
    for slot, view in (("primary", "primary"), ("secondary", "flip"), ("wrist", "wrist")):
        col = ep["steps"][f"image_{slot}"]
        if len(col) and col[0]:
            key = bytes(col[0]).decode().rpartition("@")[0]
            views.setdefault(key, view)
            if index is None:
                index = np.array([int(bytes(b).decode().rpartition("@")[2]) for b in col])
    if index is None:
        index = np.arange(len(ep["steps"]["action"]))
    return views, index


def _plan_index(canonical_index: np.ndarray, num_raw: int, num_plan: int) -> np.ndarray:
    """Scene state shown at each raw step: canonical step k shows plan state k; raw steps before
    the first kept one show state 0, after the last kept one the final state T."""
    out = np.zeros(num_raw, np.int64)
    out[canonical_index] = np.arange(len(canonical_index))
    if len(canonical_index):
        out[canonical_index[-1] + 1:] = num_plan
    return out


def generate_episode(spec, rng: np.random.Generator, *, num_steps: int, index: int = 0,
                     split: str = "train", image_size: int = 0) -> tuple[dict, dict]:
    """One raw episode (the RLDS reader's layout, see contracts) and the canonical plan behind it.

    ``spec.standardize(raw)`` reproduces ``plan["action"]`` (up to the dataset's documented lossy
    steps); every step's primary image shows the scene state its action was computed from.
    """
    scene = sc.plan_scene(rng, num_steps)
    plan = _plan(scene, rng)
    synth = dict(spec.synthesize_raw_steps(plan, rng))
    episode_synth = synth.pop("_episode", None) or {}
    num_raw = _num_raw(synth, num_steps)
    ctx = _Context(spec.name, split, index, num_raw, plan["instruction"], rng)
    raw, images = _fill(spec, _features_for_write(spec, image_size), synth, episode_synth, ctx)
    views, canon_index = _views_by_key(spec, raw)  # images still hold b"key@index" markers here
    states = _plan_index(canon_index, num_raw, num_steps)
    for sub, fspec in images:
        _put(raw["steps"], sub, _render_column(scene, states, fspec, views.get(sub[-1]), "/".join(sub)))
    return raw, plan


def _fill(spec, features: dict, synth: dict, episode_synth: dict, ctx: _Context) -> tuple[dict, list]:
    """Raw episode with every feature of ``features``: synthesized values where the registry gave
    them, else filled by name/type; image and depth columns get b"key@index" markers and are
    returned as ``[(path below steps, FeatureSpec)]`` for rendering."""
    raw: dict[str, Any] = {"steps": {}}
    images: list[tuple[tuple, FeatureSpec]] = []
    for path, fspec, in_seq in _walk(features):
        name = "/".join(path)
        if not in_seq:
            try:
                value = _find(episode_synth, path)
            except KeyError:
                value = _episode_value(name, fspec, ctx)
            _put(raw, path, value)
            continue
        sub = path[1:]  # below "steps"
        try:
            value = _coerce(name, _find(synth, sub), fspec, ctx.num_raw, spec.name)
        except KeyError:
            if fspec.kind == "image" or _is_depth(name, fspec):
                images.append((sub, fspec))
                value = _object_array([f"{sub[-1]}@{i}".encode() for i in range(ctx.num_raw)])
            else:
                value = _step_value(name, fspec, ctx)
        _put(raw["steps"], sub, value)
    return raw, images


def _num_raw(synth: dict, default: int) -> int:
    for value in synth.values():
        if isinstance(value, dict):
            n = _num_raw(value, -1)
            if n >= 0:
                return n
        else:
            return len(value)
    return default


def _render_column(scene: sc.Scene, states: np.ndarray, fspec: FeatureSpec, view: str | None,
                   path: str) -> np.ndarray:
    if _is_depth(path, fspec) and not (fspec.kind == "image" and fspec.dtype == "uint8"):
        frames = [_depth_values(scene, int(s), fspec) for s in states]
    elif fspec.kind == "image" and len(fspec.shape) == 3 and fspec.shape[2] == 1:
        frames = [sc.render_rgb(scene, int(s), *_hw(fspec), "shift")[..., :1] for s in states]
    else:
        frames = [sc.render_rgb(scene, int(s), *_hw(fspec), view or "shift") for s in states]
    if fspec.kind == "image":
        return _object_array([encode_image(f, fspec) for f in frames])
    return np.stack(frames)


def _hw(fspec: FeatureSpec) -> tuple[int, int]:
    return int(fspec.shape[0] or 64), int(fspec.shape[1] or 64)


# ------------------------------------------------------------------------------------- datasets


def _rng(seed: int, name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index])


def _layout(splits: dict, episodes: int, shards: int) -> dict[str, list[range]]:
    """{split: [episode-index range of each shard]}; indices are global (unique per dataset)."""
    out, start = {}, 0
    for split, count in split_counts(splits, episodes).items():
        n = min(shards, count)
        out[split] = [range(start + i * count // n, start + (i + 1) * count // n) for i in range(n)]
        start += count
    return out


def _episode(spec, index: int, split: str, *, steps: tuple[int, int], seed: int,
             image_size: int) -> tuple[dict, dict]:
    rng = _rng(seed, spec.name, index)
    num_steps = int(rng.integers(steps[0], steps[1] + 1))
    return generate_episode(spec, rng, num_steps=num_steps, index=index, split=split, image_size=image_size)


def generate_dataset(spec, *, episodes: int, steps: tuple[int, int], seed: int,
                     image_size: int = 0) -> dict[str, list[tuple[dict, dict]]]:
    """``{split: [(raw, plan), ...]}`` for one dataset, exactly what ``write_fixture_dataset`` writes."""
    return {split: [_episode(spec, i, split, steps=steps, seed=seed, image_size=image_size)
                    for shard in shards for i in shard]
            for split, shards in _layout(spec.splits, episodes, 1).items()}


def _features_for_write(spec, image_size: int) -> dict:
    tree = parse_type_tree(spec.features)
    if not image_size:
        return tree
    return _override_images(tree, image_size)


def _override_images(tree: dict, size: int) -> dict:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, SequenceSpec):
            out[key] = SequenceSpec(_override_images(value.feature, size), value.length)
        elif isinstance(value, dict):
            out[key] = _override_images(value, size)
        elif value.kind == "image":
            channels = value.shape[2] if len(value.shape) == 3 else 3
            out[key] = FeatureSpec("image", (size, size, channels), value.dtype,
                                   image_format=value.image_format)
        else:
            out[key] = value
    return out


def write_fixture_dataset(spec, out: str, *, episodes: int, steps: tuple[int, int], shards: int,
                          seed: int, image_size: int = 0) -> dict:
    """Generate and write ``<out>/<name>/<version>/`` (local or gs://), one episode in memory at a
    time; returns ``{"name", "dir", "episodes": {split: n}, "steps": raw steps}``."""
    from pipeline.data import rlds

    features = _features_for_write(spec, image_size)
    target = fs.join(out, spec.name, spec.version)
    fs.makedirs(target)
    split_shards: dict[str, list[int]] = {}
    num_bytes: dict[str, int] = {}
    total_steps = 0
    for split, shard_ranges in _layout(spec.splits, episodes, shards).items():
        split_shards[split], num_bytes[split] = [], 0
        for i, indices in enumerate(shard_ranges):
            url = fs.join(target, rlds.shard_filename(spec.name, split, i, len(shard_ranges)))
            with rlds.EpisodeWriter(url, features) as writer:
                for index in indices:
                    raw, _ = _episode(spec, index, split, steps=steps, seed=seed, image_size=image_size)
                    writer.write(raw)
            written = writer.close()
            split_shards[split].append(written.num_episodes)
            total_steps += written.num_frames
            fsys, path = fs.get_fs(url)
            num_bytes[split] += int(fsys.size(path))
    rlds.write_builder_metadata(target, spec.name, spec.version, features, split_shards,
                                description=f"vla fixture of {spec.name} (seed {seed})", num_bytes=num_bytes)
    return {"name": spec.name, "dir": target,
            "episodes": {s: sum(n) for s, n in split_shards.items()}, "steps": total_steps}


def run_fixture(cfg: FixtureConfig) -> int:
    """``vla fixture``: write every requested dataset and print one line each plus a total."""
    from pipeline.data.oxe import get_spec

    steps = parse_steps(cfg.steps)
    names = resolve_datasets(list(cfg.datasets))
    start = time.perf_counter()
    total_steps = 0
    for name in names:
        summary = write_fixture_dataset(get_spec(name), cfg.out, episodes=cfg.episodes, steps=steps,
                                        shards=cfg.shards, seed=cfg.seed, image_size=cfg.image_size)
        total_steps += summary["steps"]
        splits = " ".join(f"{s}={n}" for s, n in summary["episodes"].items())
        print(f"{name:<55} {splits:<18} raw_steps={summary['steps']}")
    took = time.perf_counter() - start
    print(f"wrote {len(names)} datasets ({total_steps} raw steps) to {cfg.out} in {took:.1f}s")
    return 0
