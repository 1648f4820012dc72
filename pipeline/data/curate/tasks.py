"""The two kinds of curation task (run as Ray tasks; plain functions, testable without Ray).

MAP (one per source shard ``i``): read -> registry episode filters -> standardize -> validate ->
frame filter -> episode filters -> keep. Each kept episode gets a sort key
``sha256(seed, dataset, source shard name, record index)``; the key's range picks its bucket
(``floor(key * B / 2**64)`` on the first 64 bits, so buckets are contiguous ranges of the sort order).
Kept episodes go to ``_parts/src-<i>/b-<b>.tfrecord`` (curated schema, source order); the task writes
``_parts/src-<i>.stats.npz`` (mergeable statistics) and, LAST, ``_parts/src-<i>.json`` (keys per
bucket, quarantine counts, the run key). That JSON is the commit marker: a re-run with the same run
key skips the shard.

The permutation: all kept episodes sorted by key (a seeded uniform permutation, independent of task
timing). Output shard ``j`` of ``S`` takes ranks ``[j*n//S, (j+1)*n//S)``, i.e. equal-sized shards.

REDUCE (one per output shard ``j``): reads the (one or two) buckets holding its rank range from the
source parts, keeps its episodes in key order and writes output shard ``j`` atomically, then the
marker ``_parts/out-<j>.json``. Output = pure function of (source bytes, config).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline import fs
from pipeline.data.curate.filters import (
    FilterConfig,
    apply_frame_filter,
    check_episode,
    registry_episode_filters,
)
from pipeline.data.curate.quarantine import Quarantine
from pipeline.data.curate.stats import DEFAULT_SKETCH_K, PartialStats
from pipeline.data.manifest import curated_features
from pipeline.data.schema import validate_episode

__all__ = ["driver_env", "MapJob", "ReduceJob", "to_curated", "episode_key", "run_map", "run_reduce",
           "map_marker", "reduce_marker"]


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


def reduce_marker(parts: str, j: int) -> str:
    return fs.join(parts, f"out-{j:05d}.json")


@dataclass(kw_only=True)
class MapJob:
    dataset: str
    shard_url: str
    shard_index: int
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


def _spec(job: MapJob):
    import dataclasses

    from pipeline.data.oxe import get_spec

    if job.spec_entry:  # user dataset: the driver resolved it, workers need not see its YAML
        from pipeline.data.oxe.user_registry import spec_from_entry

        spec = spec_from_entry(job.spec_entry)
    else:
        spec = get_spec(job.dataset)
    if job.cameras:
        spec = dataclasses.replace(spec, cameras={**spec.cameras, **job.cameras})
    return spec


def _curate_one(raw: dict, spec, job: MapJob, q: Quarantine) -> dict | None:
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
    if problems:
        reason = "nan_inf" if all("NaN" in p for p in problems) else "invalid_schema"
        q.drop(reason, frames=len(ep["steps"]["action"]), episode_id=ep["episode_id"], **where)
        return None
    filtered, dropped, reason = apply_frame_filter(ep, spec, job.filters)
    if filtered is None:
        q.drop(f"{reason}_all_frames", frames=dropped, episode_id=ep["episode_id"], **where)
        return None
    if dropped:
        q.drop(reason, frames=dropped, episode_id=ep["episode_id"], whole_episode=False, **where)
    reason = check_episode(filtered, job.filters)
    if reason:
        q.drop(reason, frames=len(filtered["steps"]["action"]), episode_id=ep["episode_id"], **where)
        return None
    return filtered


def run_map(job: MapJob) -> dict:
    """Curate one source shard into per-bucket part files; returns the marker dict."""
    from pipeline.data.io.rlds_reader import ReadStats, read_episodes
    from pipeline.data.io.rlds_writer import EpisodeWriter

    os.environ.update(job.env)

    marker_url = map_marker(job.parts, job.shard_index)
    done = _read_marker(marker_url, job.run_key)
    if done is not None:
        return {**done, "skipped": True}
    spec = _spec(job)
    features = curated_features(job.proprio_dim)
    q = Quarantine(job.dataset, job.max_examples)
    stats = PartialStats(k=job.sketch_k)
    read_stats = ReadStats()
    writers: dict[int, EpisodeWriter] = {}
    keys: dict[int, list] = {}
    src_dir = fs.join(job.parts, f"src-{job.shard_index:05d}")
    try:
        for raw in read_episodes(job.shard_url, job.source_features, on_corrupt="skip", dataset=job.dataset,
                                 stats=read_stats):
            q.episodes_read += 1
            ep = _curate_one(raw, spec, job, q)
            if ep is None:
                continue
            steps = ep["steps"]
            if np.asarray(steps["proprio"]).shape[1] != job.proprio_dim:
                q.drop("invalid_schema", frames=len(steps["action"]), episode_id=ep["episode_id"],
                       source_file=ep["source_file"], source_index=ep["source_index"])
                continue
            key = episode_key(job.seed, job.dataset, ep["source_file"], ep["source_index"])
            bucket = (int(key[:16], 16) * job.num_buckets) >> 64
            if bucket not in writers:
                writers[bucket] = EpisodeWriter(fs.join(src_dir, f"b-{bucket:05d}.tfrecord"), features)
            writers[bucket].write(to_curated(ep))
            keys.setdefault(bucket, []).append([key, len(steps["action"]), ep["episode_id"]])
            stats.update(steps["action"], steps["proprio"])
            q.keep(len(steps["action"]))
        for bucket in sorted(writers):
            writers.pop(bucket).close()
    finally:
        for w in writers.values():
            w.abort()
    for rec in read_stats.records:  # skipped by the reader: reason = its kind, example = file + record index
        q.drop(rec["kind"], frames=0, episode_id=f"? ({rec['message'][:160]})",
               source_file=rec["file"] or job.shard_url, source_index=rec["index"])
    fs.write_bytes(fs.join(job.parts, f"src-{job.shard_index:05d}.stats.npz"), stats.to_bytes())
    marker = {"run_key": job.run_key, "shard_index": job.shard_index, "source_file": fs.basename(job.shard_url),
              "buckets": {str(b): keys[b] for b in sorted(keys)}, "quarantine": q.to_json(),
              "episodes": q.episodes_kept, "frames": q.frames_kept}
    fs.write_json(marker_url, marker)
    return {**marker, "skipped": False}


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
    shard_url: str  # final output shard
    out_index: int
    inputs: list  # [(source shard index, bucket, [[position in that part file, key], ...]), ...]
    run_key: str
    proprio_dim: int
    env: dict = field(default_factory=dict)


def run_reduce(job: ReduceJob) -> dict:
    """Write one output shard: the wanted episodes of its buckets, in key order."""
    from pipeline.data.io.rlds_writer import write_shard

    os.environ.update(job.env)
    marker_url = reduce_marker(job.parts, job.out_index)
    done = _read_marker(marker_url, job.run_key)
    if done is not None and fs.exists(job.shard_url):
        return {**done, "skipped": True}
    features = curated_features(job.proprio_dim)
    keyed = []
    for src_index, bucket, wanted in job.inputs:
        url = fs.join(job.parts, f"src-{src_index:05d}", f"b-{bucket:05d}.tfrecord")
        keyed += _read_part(url, {int(pos): key for pos, key in wanted}, features, job.dataset)
    keyed.sort(key=lambda kv: kv[0])
    written = write_shard(job.shard_url, (ep for _, ep in keyed), features)
    marker = {"run_key": job.run_key, "file": fs.basename(job.shard_url), "episodes": written.num_episodes,
              "frames": written.num_frames, "sha256": written.sha256}
    fs.write_json(marker_url, marker)
    return {**marker, "skipped": False}
