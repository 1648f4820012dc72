"""``vla curate``: a Ray job that turns raw OXE datasets into curated, shuffled TFDS datasets.

    vla curate mixture=demo source=gs://bucket/raw out=gs://bucket/curated [seed=0] [num_shards=0]
               [ray.address=auto] [workers=0] [filters.min_steps=3] [filters.drop_empty_instruction=false]

Per dataset of the mixture (weight > 0), ``<out>/<dataset>/1.0.0/`` receives:

- shards ``<dataset>-train.tfrecord-0000j-of-0000N`` (what training reads) and
  ``<dataset>-val.tfrecord-...`` (validation) in the curated schema (contracts.md), episodes
  shuffled across shards by a seeded permutation (sort by ``sha256(seed, dataset, source shard,
  record index)``), plus ``dataset_info.json``/``features.json`` (``tfds.builder_from_directory``,
  splits ``train`` and ``val``);
- ``dataset_statistics.json`` (OpenVLA format, exact, merged from per-task partials; also cached as
  ``dataset_statistics_<stats_key>.json``), ``quarantine.json`` and, last, ``manifest.json``.

OpenVLA-compatible by default (facts: ``loader_facts.splits`` and ``normalization.statistics_file``
of the OXE facts file): statistics over EVERY source split after standardization and before any
filter except the registry's episode filters (kuka's success filter reproduces OpenVLA's offline
success-filtered copy); training data = ``train`` when the source has a ``val`` split, else the
first 95% of ``train`` (tfds rounding), validation = ``val`` or the last 5%; other splits
(``test``) only count in the statistics; q01/q99 exact (numpy's linear rule); DROID's idle-frame
filter runs on actions normalized with the final statistics (:mod:`pipeline.data.curate.splits`,
:mod:`pipeline.data.curate.quantiles`).

Work graph (see :mod:`pipeline.data.curate.tasks`): one MAP task per source shard (every split),
then one QUANTILE task per source shard (exact q01/q99; repeated with opened brackets in the rare
case a bracket missed), then one REDUCE task per output shard (train and val), then the driver
commits metadata (:mod:`pipeline.data.curate.commit`). Map and reduce outputs are published
atomically with a marker carrying the run key (hash of source fingerprint, standardization version,
curation format, config), so a killed run resumes where it stopped and ends with exactly the output
of an uninterrupted run; an unchanged re-run of a finished dataset does nothing (its manifest
matches). Intermediate part files number ``source shards x output shards`` per dataset.

Ray: a local cluster with ``os.cpu_count()`` CPUs by default; an existing cluster when
``RAY_ADDRESS`` or ``ray.address=`` is set; an already initialized Ray session is reused as is.
"""

from __future__ import annotations

import heapq
import sys
import time
from dataclasses import dataclass, field

from pipeline import fs
from pipeline.config import to_dict
from pipeline.data.curate.commit import (
    brackets_of,
    commit,
    exact_quantiles_of,
    finished,
    merged_partials,
    reused,
)
from pipeline.data.curate.filters import FilterConfig
from pipeline.data.curate.plan import CurateConfig, DatasetPlan, RayConfig, plan_dataset
from pipeline.data.curate.quarantine import format_quarantine
from pipeline.data.curate.splits import TRAIN, VAL
from pipeline.data.curate.tasks import (
    MapJob,
    QuantileJob,
    ReduceJob,
    driver_env,
    run_map,
    run_quantile_counts,
    run_reduce,
    values_url,
)
from pipeline.data.io.builder import shard_filename
from pipeline.data.manifest import MANIFEST_NAME, content_hash
from pipeline.data.mixture.files import Mixture, load_mixture
from pipeline.errors import UserError
from pipeline.ray_utils import connect_ray

__all__ = ["CurateConfig", "RayConfig", "run_curate", "curate", "DatasetPlan", "plan_dataset"]

MAP, QUANTILE, REDUCE = 0, 1, 2


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

    filters = FilterConfig(**plan.overrides["filters"])
    return [MapJob(dataset=plan.name, shard_url=s.url, shard_index=s.index, role=s.role,
                   source_features=plan.features, parts=plan.parts_dir, num_buckets=plan.num_buckets, seed=cfg.seed,
                   run_key=plan.run_key, proprio_dim=plan.proprio_dim, filters=filters,
                   cameras=plan.overrides["cameras"], fix_known_issues=cfg.fix_known_issues, sketch_k=cfg.sketch_k,
                   max_examples=cfg.max_examples, env=driver_env(), spec_entry=user_entry(plan.name) or {})
            for s in plan.shards]


def _output_shards(plan: DatasetPlan, role: str, n: int, n_train: int) -> int:
    """Train: ``num_buckets`` shards; val: the same episodes per shard (at least one shard)."""
    if n == 0:
        return 0
    if role == TRAIN:
        return min(plan.num_buckets, n)
    return min(n, plan.num_buckets, max(1, -(-plan.num_buckets * n // max(n_train, 1))))


def _reduce_jobs(plan: DatasetPlan, cfg: CurateConfig, markers: list[dict], stats: dict) -> list[ReduceJob]:
    """Per role, equal rank ranges of the key-sorted kept episodes -> one job per output shard."""
    from pipeline.data.oxe.user_registry import user_entry

    kept = {role: sorted((key, m["shard_index"], int(b), pos) for m in markers
                         for b, entries in m["buckets"].get(role, {}).items() for pos, (key, *_) in enumerate(entries))
            for role in (TRAIN, VAL)}
    jobs = []
    for role, entries in kept.items():
        n = len(entries)
        num_out = _output_shards(plan, role, n, len(kept[TRAIN]))
        for j in range(num_out):
            groups: dict[tuple[int, int], list] = {}
            for key, src, bucket, pos in entries[j * n // num_out:(j + 1) * n // num_out]:
                groups.setdefault((src, bucket), []).append([pos, key])
            inputs = [(src, bucket, wanted) for (src, bucket), wanted in sorted(groups.items())]
            jobs.append(ReduceJob(
                dataset=plan.name, parts=plan.parts_dir, role=role, out_index=j, inputs=inputs, run_key=plan.run_key,
                shard_url=fs.join(plan.out_dir, shard_filename(plan.name, role, j, num_out)),
                proprio_dim=plan.proprio_dim, action_stats=stats["action"],
                filters=FilterConfig(**plan.overrides["filters"]), cameras=plan.overrides["cameras"],
                spec_entry=user_entry(plan.name) or {}, max_examples=cfg.max_examples, env=driver_env()))
    return jobs


@dataclass
class _Run:
    """Scheduling state of one dataset: map results, then quantile rounds, then reduce results."""

    plan: DatasetPlan
    maps: list
    markers: dict = field(default_factory=dict)
    total: object = None  # merged PartialStats of the map tasks
    brackets: dict = field(default_factory=dict)
    quantiles: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    stats: dict | None = None
    reduces: list = field(default_factory=list)
    written: dict = field(default_factory=dict)
    result: dict | None = None

    def jobs(self, phase: int) -> list:
        return (self.maps, self.quantiles, self.reduces)[phase]


def _ray_get(ref):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserError):
            raise e.cause from None
        raise


def _start_quantiles(run: _Run, cfg: CurateConfig) -> None:
    if run.total is None:
        run.total = merged_partials(run.plan, cfg)
        run.brackets = brackets_of(run.total)
    run.counts = {}
    run.quantiles = [QuantileJob(values_url=values_url(run.plan.parts_dir, s.index), brackets=run.brackets, env=driver_env())
                     for s in run.plan.shards]


def _finish_quantiles(run: _Run, cfg: CurateConfig) -> bool:
    """Exact statistics and the reduce jobs; False when a bracket missed (another quantile round)."""
    quantiles, run.brackets = exact_quantiles_of(run.brackets, [run.counts[i] for i in range(len(run.quantiles))])
    if quantiles is None:
        print(f"curate: {run.plan.name}: a q01/q99 bracket missed its ranks; recounting with it opened",
              file=sys.stderr)
        _start_quantiles(run, cfg)
        return False
    run.stats = run.total.finalize(mask=run.plan.mask, quantiles=quantiles)
    run.reduces = _reduce_jobs(run.plan, cfg, [run.markers[k] for k in range(len(run.maps))], run.stats)
    return True


def _phase_done(run: _Run, phase: int, cfg: CurateConfig) -> int | None:
    """Next phase to schedule for ``run`` after ``phase`` completed (None: the dataset is committed)."""
    if phase == MAP:
        _start_quantiles(run, cfg)
        return QUANTILE
    if phase == QUANTILE and not _finish_quantiles(run, cfg):
        return QUANTILE
    if phase == QUANTILE and run.reduces:
        return REDUCE
    _finish(run, cfg)
    return None


def _schedule(runs: list[_Run], cfg: CurateConfig, limit: int, progress: _Progress) -> None:
    """Run every map, quantile and reduce task, at most ``limit`` in flight, then commit each dataset.

    Priority (dataset index, phase, job index): with one worker the order is strictly dataset
    by dataset; with more, later datasets' maps fill slots an earlier dataset cannot use.
    """
    import ray

    remote = [ray.remote(num_cpus=1, max_retries=2)(fn) for fn in (run_map, run_quantile_counts, run_reduce)]
    heap = [(d, MAP, i) for d, run in enumerate(runs) for i in range(len(run.maps))]
    heapq.heapify(heap)
    pending: dict = {}
    while heap or pending:
        while heap and len(pending) < limit:
            d, phase, i = heapq.heappop(heap)
            pending[remote[phase].remote(runs[d].jobs(phase)[i])] = (d, phase, i)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            d, phase, i = pending.pop(ref)
            run, result = runs[d], _ray_get(ref)
            store = (run.markers, run.counts, run.written)[phase]
            store[i] = result
            if phase == MAP:
                progress.update(result["quarantine"]["episodes_read"], result["episodes"], result["frames"])
            if len(store) < len(run.jobs(phase)):
                continue
            nxt = _phase_done(run, phase, cfg)
            if nxt is not None:
                for j in range(len(run.jobs(nxt))):
                    heapq.heappush(heap, (d, nxt, j))


def _finish(run: _Run, cfg: CurateConfig) -> None:
    markers = [run.markers[k] for k in range(len(run.maps))]
    written = [run.written[k] for k in range(len(run.reduces))]
    _remove_stale_shards(run.plan, written)
    resumed = any(m.get("skipped") for m in markers)
    run.result = {**commit(run.plan, cfg, run.stats, markers, written), "status": "resumed" if resumed else "curated"}


def _remove_stale_shards(plan: DatasetPlan, written: list[dict]) -> None:
    keep = {w["file"] for w in written}
    prefixes = tuple(f"{plan.name}-{role}.tfrecord-" for role in (TRAIN, VAL))
    for url in fs.listdir(plan.out_dir):
        base = fs.basename(url)
        # every task of this dataset is done: a ".tmp-" file is a write cut short by a killed run
        if (base.startswith(prefixes) and base not in keep) or ".tmp-" in base:
            fs.remove(url)


# ------------------------------------------------------------------------------------ entry points
def _summary(results: list[dict], seconds: float) -> str:
    rows = [("dataset", "status", "read", "train", "frames", "val", "stats only", "dropped", "shards")]
    for r in results:
        m, q = r["manifest"], r["quarantine"]
        val = m.get("validation", {})
        rows.append((m["dataset"], r["status"], str(q.episodes_read), str(m["total_episodes"]),
                     str(m["total_frames"]), str(val.get("total_episodes", 0)), str(q.episodes_held_out),
                     str(q.episodes_dropped), str(len(m["shards"]) + len(val.get("shards", [])))))
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
    todo = [p for p in plans if not finished(p)]
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
    return [runs[p.name].result if p.name in runs else reused(p, cfg) for p in plans]


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
