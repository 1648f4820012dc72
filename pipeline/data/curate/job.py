"""``vla curate``: a Ray job that turns raw OXE datasets into curated, shuffled TFDS datasets.

    vla curate mixture=demo source=gs://bucket/raw out=gs://bucket/curated [seed=0] [num_shards=0]
               [ray.address=auto] [workers=0] [filters.min_steps=3] [filters.drop_empty_instruction=false]

Per dataset of the mixture (weight > 0), ``<out>/<dataset>/1.0.0/`` receives:

- shards ``<dataset>-train.tfrecord-0000j-of-0000N`` in the curated schema (contracts.md), episodes
  shuffled across shards by a seeded permutation (sort by ``sha256(seed, dataset, source shard,
  record index)``), plus ``dataset_info.json``/``features.json`` (``tfds.builder_from_directory``);
- ``dataset_statistics.json`` (OpenVLA format, merged from per-task partials; also cached as
  ``dataset_statistics_<stats_key>.json``), ``quarantine.json`` and, last, ``manifest.json``.

Work graph (see :mod:`pipeline.data.curate.tasks`): one MAP task per source shard, then one REDUCE
task per output shard, then the driver commits metadata. Every task output is published atomically
with a marker carrying the run key (hash of source fingerprint, standardization version, config), so
a killed run resumes where it stopped and ends with exactly the output of an uninterrupted run; an
unchanged re-run of a finished dataset does nothing (its manifest matches).

Statistics and the quarantine report cover the kept frames of the curated split (what training
reads), not OpenVLA's "all splits before filtering". Intermediate part files number
``source shards x output shards`` per dataset (fine for fixtures and moderate data; for thousands of
shards on both sides choose a smaller ``num_shards``).

Ray: a local cluster with ``os.cpu_count()`` CPUs by default; an existing cluster when
``RAY_ADDRESS`` or ``ray.address=`` is set; an already initialized Ray session is reused as is.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

from pipeline import __version__, fs
from pipeline.config import MISSING, helpfield, to_dict
from pipeline.data.curate.filters import FilterConfig
from pipeline.data.curate.quarantine import Quarantine, format_quarantine
from pipeline.data.curate.stats import DEFAULT_SKETCH_K, PartialStats, action_mask
from pipeline.data.curate.tasks import MapJob, ReduceJob, driver_env, run_map, run_reduce
from pipeline.data.io.builder import shard_filename
from pipeline.data.manifest import (
    CURATED_VERSION,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    STATISTICS_NAME,
    CuratedDataset,
    content_hash,
    curated_features,
    source_fingerprint,
)
from pipeline.data.mixture.files import Mixture, load_mixture
from pipeline.errors import UserError
from pipeline.ray_utils import connect_ray

__all__ = ["CurateConfig", "RayConfig", "run_curate", "curate", "DatasetPlan", "plan_dataset"]


@dataclass(kw_only=True)
class RayConfig:
    address: str = helpfield("", "Ray cluster address ('' = RAY_ADDRESS env, else a local cluster)")
    num_cpus: int = helpfield(0, "CPUs of the local cluster (0 = os.cpu_count())")


@dataclass(kw_only=True)
class CurateConfig:
    mixture: str = helpfield(MISSING, "mixture name (dataset_mixtures/NAME.yaml) or YAML path")
    source: str = helpfield(MISSING, "raw data root: <source>/<dataset>/<version>/ (local or gs://)")
    out: str = helpfield(MISSING, f"curated output root: writes <out>/<dataset>/{CURATED_VERSION}/")
    split: str = helpfield("train", "source split to curate")
    seed: int = helpfield(0, "shuffle seed (output is a pure function of source + config)")
    num_shards: int = helpfield(0, "output shards per dataset (0 = as many as the source split)")
    workers: int = helpfield(0, "max concurrent tasks (0 = every CPU of the Ray cluster)")
    fix_known_issues: bool = helpfield(False, "apply the registry's [fixable] known-issue fixes")
    sketch_k: int = helpfield(DEFAULT_SKETCH_K, "quantile sketch capacity per level (rank error <= (H+2)/k)")
    max_examples: int = helpfield(5, "example episodes per quarantine reason")
    keep_parts: bool = helpfield(False, "keep the intermediate _parts/ directory")
    progress: bool = helpfield(True, "tqdm progress bar on stderr")
    filters: FilterConfig = helpfield(FilterConfig(), "curation filters")
    ray: RayConfig = helpfield(RayConfig(), "Ray cluster")

    def __post_init__(self) -> None:
        if self.num_shards < 0 or self.workers < 0:
            raise ValueError("num_shards and workers must be >= 0")
        if self.sketch_k < 2 or self.sketch_k % 2:
            raise ValueError(f"sketch_k must be an even number >= 2, got {self.sketch_k}")


@dataclass(kw_only=True)
class DatasetPlan:
    name: str
    source_dir: str
    curated: CuratedDataset
    shards: list  # [ShardInfo]
    features: dict
    proprio_dim: int
    num_buckets: int
    fingerprint: dict
    stats_key: str
    run_key: str
    overrides: dict
    mask: list

    @property
    def out_dir(self) -> str:
        return self.curated.url


# ------------------------------------------------------------------------------------ planning
def _filters_for(cfg: CurateConfig, override: dict) -> FilterConfig:
    return dataclasses.replace(cfg.filters, **override.get("filters", {}))


def _probe_proprio_dim(spec, shards: list, features: dict, cfg: CurateConfig) -> int:
    """P from standardizing the first readable episode (falls back to the registry's state size)."""
    from pipeline.data.io.rlds_reader import read_episodes

    for shard in shards:
        try:
            for raw in read_episodes(shard.url, features, on_corrupt="skip", dataset=spec.name):
                ep = spec.standardize(raw, fix_known_issues=cfg.fix_known_issues)
                return int(ep["steps"]["proprio"].shape[1])
        except Exception:
            continue
    return int(spec.state_size)


def plan_dataset(name: str, mixture: Mixture, cfg: CurateConfig) -> DatasetPlan:
    """Check the source of one dataset and derive its keys (no output is written)."""
    from pipeline.data.io.builder import open_builder
    from pipeline.data.oxe import STANDARDIZATION_VERSION, get_spec
    from pipeline.data.oxe.user_registry import entry_hash

    spec = get_spec(name)
    spec.check_trainable()
    url = fs.join(cfg.source, name)
    try:
        builder = open_builder(url)
    except UserError as e:
        raise UserError(f"source data of dataset '{name}' not found or unreadable at {url}: {e}") from None
    shards = builder.splits.get(cfg.split)
    if not shards:
        raise UserError(f"dataset '{name}' at {builder.url} has no split '{cfg.split}' "
                        f"(has: {', '.join(builder.splits) or 'none'}); set split=...")
    override = mixture.overrides.get(name, {})
    filters = _filters_for(cfg, override)
    digest, sizes = source_fingerprint(builder.url, [s.url for s in shards])
    fingerprint = {"url": builder.url, "fingerprint": digest,
                   "shards": [{**sz, "episodes": s.num_episodes} for sz, s in zip(sizes, shards)]}
    stats_key = content_hash(digest, STANDARDIZATION_VERSION, dataclasses.asdict(filters), cfg.split,
                             cfg.fix_known_issues, override.get("cameras", {}), cfg.sketch_k, *entry_hash(name))
    num_buckets = cfg.num_shards or len(shards)
    run_key = content_hash(stats_key, cfg.seed, num_buckets, __version__)
    cameras = override.get("cameras", {})
    proprio_dim = _probe_proprio_dim(spec, shards, builder.features, cfg)
    mask = action_mask()  # EEF_POS and our 7-D EEF_R6 projection: gripper unnormalized
    return DatasetPlan(name=name, source_dir=builder.url, curated=CuratedDataset(cfg.out, name), shards=shards,
                       features=builder.features, proprio_dim=proprio_dim, num_buckets=num_buckets,
                       fingerprint=fingerprint, stats_key=stats_key, run_key=run_key,
                       overrides={"filters": dataclasses.asdict(filters), "cameras": cameras}, mask=mask)


def _check_mixture(mixture: Mixture) -> None:
    from pipeline.data.oxe import get_spec

    for name in mixture.active():
        get_spec(name).check_trainable()  # JOINT_POS etc.: UserError before any work


# ------------------------------------------------------------------------------------ ray
def _init_ray(cfg: CurateConfig) -> bool:
    """Initialize Ray unless it already is; returns True when this call started it."""
    return connect_ray(cfg.ray.address, cfg.ray.num_cpus)


def _max_in_flight(cfg: CurateConfig) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cfg.workers, cpus) if cfg.workers else cpus)


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="ep", file=sys.stderr, disable=not enabled, desc="curate",
                        dynamic_ncols=True)
        self.start = time.time()
        self.episodes = self.frames = 0

    def update(self, read: int, kept: int, frames: int) -> None:
        self.episodes += kept
        self.frames += frames
        dt = max(time.time() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.episodes / dt:.1f} ep/s, {self.frames / dt:.0f} frames/s")
        self.bar.update(read)

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------ per dataset
def _map_jobs(plan: DatasetPlan, cfg: CurateConfig) -> list[MapJob]:
    from pipeline.data.oxe.user_registry import user_entry

    parts = fs.join(plan.out_dir, "_parts")
    filters = FilterConfig(**plan.overrides["filters"])
    return [MapJob(dataset=plan.name, shard_url=s.url, shard_index=i, source_features=plan.features, parts=parts,
                   num_buckets=plan.num_buckets, seed=cfg.seed, run_key=plan.run_key, proprio_dim=plan.proprio_dim,
                   filters=filters, cameras=plan.overrides["cameras"], fix_known_issues=cfg.fix_known_issues,
                   sketch_k=cfg.sketch_k, max_examples=cfg.max_examples, env=driver_env(),
                   spec_entry=user_entry(plan.name) or {})
            for i, s in enumerate(plan.shards)]


def _reduce_jobs(plan: DatasetPlan, cfg: CurateConfig, markers: list[dict]) -> list[ReduceJob]:
    """Equal rank ranges of the key-sorted kept episodes -> one job per output shard."""
    parts = fs.join(plan.out_dir, "_parts")
    kept = sorted((key, m["shard_index"], int(b), pos)
                  for m in markers for b, entries in m["buckets"].items() for pos, (key, *_) in enumerate(entries))
    n = len(kept)
    num_out = min(plan.num_buckets, n)
    jobs = []
    for j in range(num_out):
        groups: dict[tuple[int, int], list] = {}
        for key, src, bucket, pos in kept[j * n // num_out:(j + 1) * n // num_out]:
            groups.setdefault((src, bucket), []).append([pos, key])
        inputs = [(src, bucket, wanted) for (src, bucket), wanted in sorted(groups.items())]
        url = fs.join(plan.out_dir, shard_filename(plan.name, "train", j, num_out))
        jobs.append(ReduceJob(dataset=plan.name, parts=parts, shard_url=url, out_index=j, inputs=inputs,
                              run_key=plan.run_key, proprio_dim=plan.proprio_dim, env=driver_env()))
    return jobs


def _merge_partials(plan: DatasetPlan, cfg: CurateConfig) -> dict:
    parts = fs.join(plan.out_dir, "_parts")
    total = PartialStats(k=cfg.sketch_k)
    for i in range(len(plan.shards)):
        total.merge(PartialStats.from_bytes(fs.read_bytes(fs.join(parts, f"src-{i:05d}.stats.npz"))))
    return total.finalize(mask=plan.mask)


def _commit(plan: DatasetPlan, cfg: CurateConfig, markers: list[dict], written: list[dict]) -> dict:
    from pipeline.data.io.rlds_writer import write_builder_metadata

    q = Quarantine(plan.name, cfg.max_examples)
    for m in markers:
        q.merge(Quarantine.from_json(m["quarantine"], cfg.max_examples))
    stats = _merge_partials(plan, cfg)
    fs.write_json(fs.join(plan.out_dir, f"dataset_statistics_{plan.stats_key[:16]}.json"), {plan.name: stats})
    fs.write_json(plan.curated.file(STATISTICS_NAME), {plan.name: stats})
    fs.write_json(plan.curated.file(QUARANTINE_NAME), q.to_json())
    features = curated_features(plan.proprio_dim)
    write_builder_metadata(plan.out_dir, plan.name, CURATED_VERSION, features,
                           {"train": [w["episodes"] for w in written]},
                           description=f"{plan.name} curated by pipeline {__version__} (vla curate)")
    manifest = {
        "format": 1, "dataset": plan.name, "version": CURATED_VERSION, "split": "train", "source_split": cfg.split,
        "shards": [{"file": w["file"], "episodes": w["episodes"], "frames": w["frames"], "sha256": w["sha256"]}
                   for w in written],
        "total_episodes": sum(w["episodes"] for w in written), "total_frames": sum(w["frames"] for w in written),
        "proprio_dim": plan.proprio_dim, "source": plan.fingerprint, "code_version": __version__,
        "standardization_version": _std_version(), "seed": cfg.seed, "num_buckets": plan.num_buckets,
        "filters": plan.overrides["filters"], "cameras": plan.overrides["cameras"],
        "config_hash": plan.run_key, "stats_key": plan.stats_key,
        "quarantine": {"episodes_dropped": q.episodes_dropped, "frames_dropped": q.frames_dropped},
    }
    fs.write_json(plan.curated.file(MANIFEST_NAME), manifest)
    if not cfg.keep_parts:
        fs.remove(fs.join(plan.out_dir, "_parts"), recursive=True)
    return {"manifest": manifest, "quarantine": q}


def _std_version() -> str:
    from pipeline.data.oxe import STANDARDIZATION_VERSION

    return STANDARDIZATION_VERSION


def _finished(plan: DatasetPlan) -> bool:
    manifest = plan.curated.read_manifest()
    return manifest is not None and manifest.get("config_hash") == plan.run_key


def _reused(plan: DatasetPlan, cfg: CurateConfig) -> dict:
    manifest = plan.curated.read_manifest()
    q = Quarantine.from_json(fs.read_json(plan.curated.file(QUARANTINE_NAME)), cfg.max_examples)
    return {"manifest": manifest, "quarantine": q, "status": "reused"}


@dataclass
class _Run:
    """Scheduling state of one dataset: its map results, then its reduce jobs and results."""

    plan: DatasetPlan
    maps: list
    markers: dict = dataclasses.field(default_factory=dict)
    reduces: list = dataclasses.field(default_factory=list)
    written: dict = dataclasses.field(default_factory=dict)
    result: dict | None = None


def _ray_get(ref):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise e.cause from None
        raise


def _schedule(runs: list[_Run], cfg: CurateConfig, limit: int, progress: _Progress) -> None:
    """Run every map then reduce task, at most ``limit`` in flight, then commit each dataset.

    Priority (dataset index, phase, job index): with one worker the order is strictly dataset by
    dataset; with more, later datasets' maps fill slots an earlier dataset cannot use.
    """
    import heapq

    import ray

    remotes = (ray.remote(num_cpus=1, max_retries=2)(run_map), ray.remote(num_cpus=1, max_retries=2)(run_reduce))
    heap = [(d, 0, i) for d, run in enumerate(runs) for i in range(len(run.maps))]
    heapq.heapify(heap)
    pending: dict = {}
    while heap or pending:
        while heap and len(pending) < limit:
            d, phase, i = heapq.heappop(heap)
            job = runs[d].maps[i] if phase == 0 else runs[d].reduces[i]
            pending[remotes[phase].remote(job)] = (d, phase, i)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            d, phase, i = pending.pop(ref)
            run, result = runs[d], _ray_get(ref)
            if phase == 0:
                run.markers[i] = result
                progress.update(result["quarantine"]["episodes_read"], result["episodes"], result["frames"])
                if len(run.markers) == len(run.maps):
                    run.reduces = _reduce_jobs(run.plan, cfg, [run.markers[k] for k in range(len(run.maps))])
                    for j in range(len(run.reduces)):
                        heapq.heappush(heap, (d, 1, j))
            else:
                run.written[i] = result
            if len(run.markers) == len(run.maps) and len(run.written) == len(run.reduces) and run.result is None:
                _finish(run, cfg)


def _finish(run: _Run, cfg: CurateConfig) -> None:
    markers = [run.markers[k] for k in range(len(run.maps))]
    written = [run.written[k] for k in range(len(run.reduces))]
    _remove_stale_shards(run.plan, written)
    resumed = any(m.get("skipped") for m in markers)
    run.result = {**_commit(run.plan, cfg, markers, written), "status": "resumed" if resumed else "curated"}


def _remove_stale_shards(plan: DatasetPlan, written: list[dict]) -> None:
    keep = {w["file"] for w in written}
    for url in fs.listdir(plan.out_dir):
        base = fs.basename(url)
        # every task of this dataset is done: a ".tmp-" file is a write cut short by a killed run
        if (base.startswith(f"{plan.name}-train.tfrecord-") and base not in keep) or ".tmp-" in base:
            fs.remove(url)


# ------------------------------------------------------------------------------------ entry points
def _summary(results: list[dict], seconds: float) -> str:
    rows = [("dataset", "status", "read", "kept", "frames", "dropped", "shards")]
    for r in results:
        m, q = r["manifest"], r["quarantine"]
        rows.append((m["dataset"], r["status"], str(q.episodes_read), str(m["total_episodes"]),
                     str(m["total_frames"]), str(q.episodes_dropped), str(len(m["shards"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    frames = sum(r["manifest"]["total_frames"] for r in results)
    lines.append(f"{len(results)} dataset(s), {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.0f} frames/s)")
    return "\n".join(lines)


def curate(cfg: CurateConfig) -> list[dict]:
    """Curate every dataset of the mixture; returns per-dataset ``{manifest, quarantine, status}``."""
    mixture = load_mixture(cfg.mixture)
    fs.check_local_dir_writable(cfg.out, "out")  # before planning or Ray
    _check_mixture(mixture)
    plans = [plan_dataset(name, mixture, cfg) for name in mixture.active()]  # UserErrors before any work
    todo = [p for p in plans if not _finished(p)]
    for plan in todo:  # stale output of another config: its manifest goes first, the new one is written last
        if plan.curated.is_curated():
            fs.remove(plan.curated.file(MANIFEST_NAME))
    runs = {p.name: _Run(p, _map_jobs(p, cfg)) for p in todo}
    if runs:
        started = _init_ray(cfg)
        progress = _Progress(sum(s.num_episodes for p in todo for s in p.shards), cfg.progress)
        try:
            _schedule(list(runs.values()), cfg, _max_in_flight(cfg), progress)
        finally:
            progress.close()
            if started:
                import ray

                ray.shutdown()
    return [runs[p.name].result if p.name in runs else _reused(p, cfg) for p in plans]


def run_curate(cfg: CurateConfig) -> int:
    t0 = time.time()
    results = curate(cfg)
    print(_summary(results, time.time() - t0))
    print()
    print(format_quarantine([r["quarantine"] for r in results]))
    for r in results:
        if r["manifest"]["total_episodes"] == 0:
            print(f"warning: every episode of {r['manifest']['dataset']} was dropped (see its quarantine.json); "
                  "training on this mixture will fail until it has data", file=sys.stderr)
    print(f"\nconfig: {content_hash(to_dict(cfg))[:12]}; output under {cfg.out}")
    return 0
