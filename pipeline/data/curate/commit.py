"""The end of a dataset's curation: exact statistics from the map and quantile passes, then the
metadata commit (statistics, quarantine, TFDS metadata, and ``manifest.json`` last).

Manifest (``format`` 2), beyond the fields :mod:`pipeline.data.manifest` lists: ``shards`` /
``total_episodes`` / ``total_frames`` describe the TRAINING split (``split: "train"``);
``validation`` holds the same fields for the validation split (``split: "val"``, ``source``:
``"val"`` or ``"train[95%:]"``); ``source_splits`` says, per source split, how many episodes it has
and what curation made of them (train, val, statistics only). Statistics cover every source split
(``statistics.computed_on``).
"""

from __future__ import annotations

from pipeline import __version__, fs
from pipeline.data.curate.plan import CURATION_FORMAT, CurateConfig, DatasetPlan
from pipeline.data.curate.quantiles import QUANTILES, BracketCounts, BracketMiss, bracket_from_sketch
from pipeline.data.curate.quarantine import Quarantine
from pipeline.data.curate.splits import TRAIN, VAL
from pipeline.data.curate.stats import PartialStats
from pipeline.data.curate.tasks import stats_url
from pipeline.data.manifest import (
    CURATED_VERSION,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    STATISTICS_NAME,
    curated_features,
)

__all__ = ["merged_partials", "brackets_of", "exact_quantiles_of", "commit", "reused", "finished", "std_version",
           "COMPUTED_ON"]

COMPUTED_ON = ("every source split (test and val included), after standardization, before the episode "
               "filters (registry episode filters such as kuka's success filter excepted) and before "
               "the frame filter")


def merged_partials(plan: DatasetPlan, cfg: CurateConfig) -> PartialStats:
    """Moments + sketches of every map task, merged in source-shard order."""
    total = PartialStats(k=cfg.sketch_k, proprio_dim=plan.proprio_dim)
    for s in plan.shards:
        total.merge(PartialStats.from_bytes(fs.read_bytes(stats_url(plan.parts_dir, s.index))))
    return total


def brackets_of(total: PartialStats) -> dict:
    """q01/q99 value brackets per key from the merged sketches."""
    return {"action": bracket_from_sketch(total.action.sketch, QUANTILES),
            "proprio": bracket_from_sketch(total.proprio.sketch, QUANTILES)}


def exact_quantiles_of(brackets: dict, answers: list[dict[str, bytes]]) -> tuple[dict | None, dict]:
    """``(exact quantiles per key, brackets)`` from every quantile task's counts (in shard order);
    when a bracket missed its ranks: ``(None, the brackets widened where they missed)``."""
    out, widened, missed = {}, dict(brackets), False
    for key, bracket in brackets.items():
        total = BracketCounts(bracket)
        for answer in answers:
            total.merge(BracketCounts.from_bytes(answer[key]))
        try:
            out[key] = total.select(QUANTILES)
        except BracketMiss as miss:
            widened[key], missed = bracket.widened(miss.misses), True
    return (None if missed else out), widened


def std_version() -> str:
    from pipeline.data.oxe import STANDARDIZATION_VERSION

    return STANDARDIZATION_VERSION


def _split_entry(written: list[dict]) -> dict:
    return {"shards": [{"file": w["file"], "episodes": w["episodes"], "frames": w["frames"], "sha256": w["sha256"]}
                       for w in written],
            "total_episodes": sum(w["episodes"] for w in written), "total_frames": sum(w["frames"] for w in written)}


def commit(plan: DatasetPlan, cfg: CurateConfig, stats: dict, markers: list[dict], written: list[dict]) -> dict:
    """Write statistics, quarantine, TFDS metadata and (last) the manifest of one dataset."""
    from pipeline.data.io.rlds_writer import write_builder_metadata

    q = Quarantine(plan.name, cfg.max_examples)
    for m in [*markers, *written]:
        q.merge(Quarantine.from_json(m["quarantine"], cfg.max_examples))
    fs.write_json(fs.join(plan.out_dir, f"dataset_statistics_{plan.stats_key[:16]}.json"), {plan.name: stats})
    fs.write_json(plan.curated.file(STATISTICS_NAME), {plan.name: stats})
    fs.write_json(plan.curated.file(QUARANTINE_NAME), q.to_json())
    by_role = {role: [w for w in written if w["role"] == role] for role in (TRAIN, VAL)}
    split_shards = {role: [w["episodes"] for w in ws] for role, ws in by_role.items() if ws}
    write_builder_metadata(plan.out_dir, plan.name, CURATED_VERSION, curated_features(plan.proprio_dim),
                           split_shards or {TRAIN: []},
                           description=f"{plan.name} curated by pipeline {__version__} (vla curate)")
    manifest = {
        "format": CURATION_FORMAT, "dataset": plan.name, "version": CURATED_VERSION, "split": TRAIN,
        "source_split": cfg.split, **_split_entry(by_role[TRAIN]),
        "validation": {"split": VAL, "source": plan.validation_source, **_split_entry(by_role[VAL])},
        "source_splits": plan.splits,
        "statistics": {"computed_on": COMPUTED_ON, "num_transitions": stats["num_transitions"],
                       "num_trajectories": stats["num_trajectories"]},
        "proprio_dim": plan.proprio_dim, "source": plan.fingerprint, "code_version": __version__,
        "standardization_version": std_version(), "seed": cfg.seed, "num_buckets": plan.num_buckets,
        "filters": plan.overrides["filters"], "cameras": plan.overrides["cameras"],
        "config_hash": plan.run_key, "stats_key": plan.stats_key,
        "quarantine": {"episodes_dropped": q.episodes_dropped, "frames_dropped": q.frames_dropped,
                       "episodes_held_out": q.episodes_held_out},
    }
    fs.write_json(plan.curated.file(MANIFEST_NAME), manifest)
    if not cfg.keep_parts:
        fs.remove(plan.parts_dir, recursive=True)
    return {"manifest": manifest, "quarantine": q}


def finished(plan: DatasetPlan) -> bool:
    manifest = plan.curated.read_manifest()
    return manifest is not None and manifest.get("config_hash") == plan.run_key


def reused(plan: DatasetPlan, cfg: CurateConfig) -> dict:
    manifest = plan.curated.read_manifest()
    q = Quarantine.from_json(fs.read_json(plan.curated.file(QUARANTINE_NAME)), cfg.max_examples)
    return {"manifest": manifest, "quarantine": q, "status": "reused"}
