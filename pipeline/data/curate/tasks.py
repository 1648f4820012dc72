"""The curation tasks (run as Ray tasks; plain functions, testable without Ray).

MAP (one per source shard ``i``, every split): read -> registry episode filters (kuka success:
OpenVLA's offline success-filtered copy) -> standardize -> validate -> STATISTICS (every split, before
any other filter) -> test-split episodes stop here -> episode filters (unlabeled, ...) -> keep, as
train or val (:mod:`pipeline.data.curate.splits`). Each kept episode gets a sort key
``sha256(seed, dataset, source shard name, record index)``; the key's range picks its bucket
(``floor(key * B / 2**64)`` on the first 64 bits, so buckets are contiguous ranges of the sort order).
Kept episodes go to ``_parts/src-<i>/<role>-<b>.tfrecord`` (curated schema, source order); the task
writes ``_parts/src-<i>.stats.npz`` (mergeable statistics + quantile sketch),
``_parts/src-<i>.values.npz`` (the float32 action and proprio rows it counted, for the exact
quantile pass) and, LAST, ``_parts/src-<i>.json`` (keys per role and bucket, quarantine counts, the
run key). That JSON is the commit marker: a re-run with the same run key skips the shard.

QUANTILE (one per source shard): counts its ``values.npz`` against the q01/q99 brackets of the merged
sketch (:mod:`pipeline.data.curate.quantiles`); cheap, recomputed on a resumed run.

The permutation: all kept episodes of a role sorted by key (a seeded uniform permutation,
independent of task timing). Output shard ``j`` of ``S`` takes ranks ``[j*n//S, (j+1)*n//S)``.

REDUCE (one per output shard ``j`` of a role): reads the buckets holding its rank range from the
source parts, keeps its episodes in key order, applies the registry's frame filter (DROID idle
frames) to the action normalized with the FINAL statistics, drops episodes left shorter than
``min_steps``, and writes output shard ``j`` atomically, then the marker ``_parts/out-<role>-<j>.json``.
Output = pure function of (source bytes, config).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline import fs
from pipeline.data.curate.filters import (
    FilterConfig,
    apply_frame_filter,
    check_episode,
    has_nan_inf,
    registry_episode_filters,
)
from pipeline.data.curate.quantiles import BracketCounts
from pipeline.data.curate.quarantine import Quarantine
from pipeline.data.curate.splits import STATS_ONLY, SplitRole
from pipeline.data.curate.stats import DEFAULT_SKETCH_K, PartialStats
from pipeline.data.manifest import curated_features
from pipeline.data.schema import validate_episode

__all__ = ["driver_env", "MapJob", "QuantileJob", "ReduceJob", "to_curated", "episode_key", "run_map",
           "run_quantile_counts", "run_reduce", "map_marker", "reduce_marker", "values_url", "stats_url", "part_url"]


def to_curated(ep: dict) -> dict:
    """Canonical episode -> nested dict in the curated feature layout (``curated_features``; what the writer takes)."""
    s = ep["steps"]
    return {
        "steps": {
            "observation": {"image_primary": s["image_primary"], "image_secondary": s["image_secondary"],
                            "image_wrist": s["image_wrist"], "proprio": np.asarray(s["proprio"], np.float32)},
            "action": np.asarray(s["action"], np.float32),
            "language_instruction": np.asarray([str(x) for x in s["language_instruction"]], object),
            "is_first": s["is_first"], "is_last": s["is_last"], "is_terminal": s["is_terminal"],
        },
        "episode_metadata": {"dataset_name": ep["dataset_name"], "episode_id": ep["episode_id"],
                             "source_file": ep["source_file"], "source_index": np.int64(ep["source_index"])},
    }


FORWARDED_ENV = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "GOOGLE_APPLICATION_CREDENTIALS",
                 "VLA_DATASET_REGISTRY")


def driver_env() -> dict:
    """Storage-related environment of the driver, forwarded to tasks (workers may predate it)."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def episode_key(seed: int, dataset: str, source_file: str, index: int) -> str:
    text = f"{seed}\x00{dataset}\x00{os.path.basename(str(source_file))}\x00{int(index)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def map_marker(parts: str, i: int) -> str:
    return fs.join(parts, f"src-{i:05d}.json")


def reduce_marker(parts: str, role: str, j: int) -> str:
    return fs.join(parts, f"out-{role}-{j:05d}.json")


def values_url(parts: str, i: int) -> str:
    return fs.join(parts, f"src-{i:05d}.values.npz")


def stats_url(parts: str, i: int) -> str:
    return fs.join(parts, f"src-{i:05d}.stats.npz")


def part_url(parts: str, i: int, role: str, bucket: int) -> str:
    """Kept episodes of source shard ``i`` with ``role`` in ``bucket``."""
    return fs.join(parts, f"src-{i:05d}", f"{role}-{bucket:05d}.tfrecord")


@dataclass(kw_only=True)
class MapJob:
    dataset: str
    shard_url: str
    shard_index: int
    role: SplitRole  # the shard's split and what its episodes become (train / val / statistics only)
    source_features: dict
    parts: str  # <out>/<dataset>/1.0.0/_parts
    num_buckets: int
    seed: int
    run_key: str
    proprio_dim: int
    filters: FilterConfig = field(default_factory=FilterConfig)
    cameras: dict = field(default_factory=dict)  # slot override
    fix_known_issues: bool = False
    sketch_k: int = DEFAULT_SKETCH_K
    max_examples: int = 5
    env: dict = field(default_factory=dict)  # storage env of the driver (e.g. STORAGE_EMULATOR_HOST)
    spec_entry: dict = field(default_factory=dict)  # resolved user-registry entry (empty for built-in datasets)


def _read_marker(url: str, run_key: str) -> dict | None:
    if not fs.exists(url):
        return None
    marker = fs.read_json(url)
    return marker if marker.get("run_key") == run_key else None


def _spec(dataset: str, spec_entry: dict, cameras: dict):
    import dataclasses

    from pipeline.data.oxe import get_spec

    if spec_entry:  # user dataset: the driver resolved it, workers need not see its YAML
        from pipeline.data.oxe.user_registry import spec_from_entry

        spec = spec_from_entry(spec_entry)
    else:
        spec = get_spec(dataset)
    if cameras:
        spec = dataclasses.replace(spec, cameras={**spec.cameras, **cameras})
    return spec


def _standardize_one(raw: dict, spec, job: MapJob, q: Quarantine) -> dict | None:
    """Registry episode filters, standardization and schema checks: what may enter statistics."""
    src = raw.get("_source", {})
    where = {"source_file": str(src.get("file", "")), "source_index": int(src.get("index", -1))}
    n_raw = len(raw["steps"]["is_first"]) if "is_first" in raw["steps"] else 0
    reason = registry_episode_filters(raw, spec, job.filters)
    if reason:
        q.drop(reason, frames=n_raw, episode_id=spec.episode_id(raw), **where)
        return None
    try:
        ep = spec.standardize(raw, fix_known_issues=job.fix_known_issues)
    except Exception as e:  # a transform failing on odd data is counted, not fatal
        q.drop("standardize_error", frames=n_raw, episode_id=f"{spec.episode_id(raw)} ({type(e).__name__})", **where)
        return None
    problems = validate_episode(ep)
    if not job.filters.drop_nan_inf:
        problems = [p for p in problems if "NaN" not in p]
    if not problems and np.asarray(ep["steps"]["proprio"]).shape[1] != job.proprio_dim:
        problems = [f"proprio has {np.asarray(ep['steps']['proprio']).shape[1]} dims, expected {job.proprio_dim}"]
    if problems:
        reason = "nan_inf" if all("NaN" in p for p in problems) else "invalid_schema"
        q.drop(reason, frames=len(ep["steps"]["action"]), episode_id=ep["episode_id"], **where)
        return None
    return ep


def run_map(job: MapJob) -> dict:
    """Curate one source shard into per-role, per-bucket part files; returns the marker dict."""
    from pipeline.data.io.rlds_reader import ReadStats, read_episodes
    from pipeline.data.io.rlds_writer import EpisodeWriter

    os.environ.update(job.env)

    marker_url = map_marker(job.parts, job.shard_index)
    done = _read_marker(marker_url, job.run_key)
    if done is not None:
        return {**done, "skipped": True}
    spec = _spec(job.dataset, job.spec_entry, job.cameras)
    features = curated_features(job.proprio_dim)
    q = Quarantine(job.dataset, job.max_examples)
    stats = PartialStats(k=job.sketch_k, proprio_dim=job.proprio_dim)
    values: dict[str, list] = {"action": [], "proprio": []}
    read_stats = ReadStats()
    writers: dict[tuple[str, int], EpisodeWriter] = {}
    keys: dict[str, dict[int, list]] = {}
    try:
        for raw in read_episodes(job.shard_url, job.source_features, on_corrupt="skip", dataset=job.dataset,
                                 stats=read_stats):
            q.episodes_read += 1
            ep = _standardize_one(raw, spec, job, q)
            if ep is None:
                continue
            steps = ep["steps"]
            if not has_nan_inf(ep):  # statistics: every split, before the episode filters
                stats.update(steps["action"], steps["proprio"])
                values["action"].append(np.asarray(steps["action"], np.float32))
                values["proprio"].append(np.asarray(steps["proprio"], np.float32))
            role = job.role.of(ep["source_index"])
            if role == STATS_ONLY:
                q.hold_out(len(steps["action"]))
                continue
            reason = check_episode(ep, job.filters)
            if reason:
                q.drop(reason, frames=len(steps["action"]), episode_id=ep["episode_id"],
                       source_file=ep["source_file"], source_index=ep["source_index"])
                continue
            key = episode_key(job.seed, job.dataset, ep["source_file"], ep["source_index"])
            bucket = (int(key[:16], 16) * job.num_buckets) >> 64
            if (role, bucket) not in writers:
                writers[role, bucket] = EpisodeWriter(part_url(job.parts, job.shard_index, role, bucket), features)
            writers[role, bucket].write(to_curated(ep))
            keys.setdefault(role, {}).setdefault(bucket, []).append([key, len(steps["action"]), ep["episode_id"]])
        for wkey in sorted(writers):
            writers.pop(wkey).close()
    finally:
        for w in writers.values():
            w.abort()
    for rec in read_stats.records:  # skipped by the reader: reason = its kind, example = file + record index
        q.drop(rec["kind"], frames=0, episode_id=f"? ({rec['message'][:160]})",
               source_file=rec["file"] or job.shard_url, source_index=rec["index"])
    fs.write_bytes(stats_url(job.parts, job.shard_index), stats.to_bytes())
    fs.write_bytes(values_url(job.parts, job.shard_index), _values_bytes(values, job.proprio_dim))
    marker = {"run_key": job.run_key, "shard_index": job.shard_index, "source_file": fs.basename(job.shard_url),
              "split": job.role.split,
              "buckets": {role: {str(b): keys[role][b] for b in sorted(keys[role])} for role in sorted(keys)},
              "quarantine": q.to_json(),
              "episodes": sum(len(v) for r in keys.values() for v in r.values()),
              "frames": sum(e[1] for r in keys.values() for v in r.values() for e in v)}
    fs.write_json(marker_url, marker)
    return {**marker, "skipped": False}


def _values_bytes(values: dict[str, list], proprio_dim: int) -> bytes:
    widths = {"action": 7, "proprio": proprio_dim}
    arrays = {k: np.concatenate(v) if v else np.zeros((0, widths[k]), np.float32) for k, v in values.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@dataclass(kw_only=True)
class QuantileJob:
    values_url: str
    brackets: dict  # {"action": Bracket, "proprio": Bracket}
    env: dict = field(default_factory=dict)


def run_quantile_counts(job: QuantileJob) -> dict[str, bytes]:
    """One source shard's :class:`BracketCounts` per key (serialized)."""
    os.environ.update(job.env)
    with np.load(io.BytesIO(fs.read_bytes(job.values_url))) as z:
        out = {}
        for key, bracket in job.brackets.items():
            counts = BracketCounts(bracket)
            counts.update(z[key])
            out[key] = counts.to_bytes()
    return out


def _read_part(url: str, key_of: dict[int, str], features: dict, dataset: str, attempts: int = 3) -> list:
    """``(key, episode)`` of the wanted positions of one part file (our own output: a failed read is
    retried with fresh storage metadata before it is an error)."""
    from pipeline.data.io.rlds_reader import read_episodes

    for attempt in range(attempts):
        try:
            out = [(key_of[pos], ep) for pos, ep in enumerate(read_episodes(url, features, dataset=dataset))
                   if pos in key_of]
            if len(out) != len(key_of):
                raise RuntimeError(f"{url}: {len(out)} of the {len(key_of)} episodes its marker lists")
            for _, ep in out:
                ep.pop("_source", None)
            return out
        except Exception:
            if attempt == attempts - 1:
                raise
            fs.get_fs(url)[0].invalidate_cache()
            time.sleep(0.5 * (attempt + 1))
    return []


@dataclass(kw_only=True)
class ReduceJob:
    dataset: str
    parts: str
    role: str  # train | val
    shard_url: str  # final output shard
    out_index: int
    inputs: list  # [(source shard index, bucket, [[position in that part file, key], ...]), ...]
    run_key: str
    proprio_dim: int
    action_stats: dict  # final dataset_statistics "action" entry (frame filters normalize with it)
    filters: FilterConfig = field(default_factory=FilterConfig)
    cameras: dict = field(default_factory=dict)
    spec_entry: dict = field(default_factory=dict)
    max_examples: int = 5
    env: dict = field(default_factory=dict)


def _after_frame_filter(ep: dict, spec, job: ReduceJob, norm, q: Quarantine) -> dict | None:
    """The registry frame filter on the action normalized with the final statistics, then min_steps."""
    from pipeline.data.stream.normalize import normalize_bounds_q99

    meta = ep["episode_metadata"]
    where = {"episode_id": bytes(meta["episode_id"]).decode("utf-8"),
             "source_file": bytes(meta["source_file"]).decode("utf-8"), "source_index": int(meta["source_index"])}
    normalized = normalize_bounds_q99(ep["steps"]["action"], norm) if spec.frame_filter else None
    filtered, dropped, reason = apply_frame_filter(ep, spec, job.filters, normalized)
    if filtered is None:
        q.drop(f"{reason}_all_frames", frames=dropped, **where)
        return None
    if dropped:
        q.drop(reason, frames=dropped, whole_episode=False, **where)
    frames = len(filtered["steps"]["action"])
    if frames < max(job.filters.min_steps, 1):
        q.drop("too_short", frames=frames, **where)
        return None
    q.keep(frames)
    return filtered


def run_reduce(job: ReduceJob) -> dict:
    """Write one output shard: the wanted episodes of its buckets, in key order, frame-filtered."""
    from pipeline.data.io.rlds_writer import write_shard
    from pipeline.data.stream.normalize import parse_dataset_norm

    os.environ.update(job.env)
    marker_url = reduce_marker(job.parts, job.role, job.out_index)
    done = _read_marker(marker_url, job.run_key)
    if done is not None and fs.exists(job.shard_url):
        return {**done, "skipped": True}
    spec = _spec(job.dataset, job.spec_entry, job.cameras)
    norm = parse_dataset_norm({job.dataset: {"action": job.action_stats}}, job.dataset).action
    features = curated_features(job.proprio_dim)
    keyed = []
    for src_index, bucket, wanted in job.inputs:
        url = part_url(job.parts, src_index, job.role, bucket)
        keyed += _read_part(url, {int(pos): key for pos, key in wanted}, features, job.dataset)
    keyed.sort(key=lambda kv: kv[0])
    q = Quarantine(job.dataset, job.max_examples)
    episodes = (_after_frame_filter(ep, spec, job, norm, q) for _, ep in keyed)
    written = write_shard(job.shard_url, (ep for ep in episodes if ep is not None), features)
    marker = {"run_key": job.run_key, "role": job.role, "file": fs.basename(job.shard_url),
              "episodes": written.num_episodes, "frames": written.num_frames, "sha256": written.sha256,
              "quarantine": q.to_json()}
    fs.write_json(marker_url, marker)
    return {**marker, "skipped": False}
