"""``vla curate`` config and per-dataset planning: which source shards, which roles, which keys.

Planning reads only metadata (``dataset_info.json``, ``features.json``, shard sizes, one episode to
probe the proprio width) and raises every UserError before any output is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline import __version__, fs
from pipeline.config import MISSING, helpfield
from pipeline.data.curate.filters import FilterConfig
from pipeline.data.curate.splits import VAL, SplitRole, has_val_split, split_roles, train_boundary
from pipeline.data.curate.stats import DEFAULT_SKETCH_K, action_mask
from pipeline.data.manifest import CURATED_VERSION, CuratedDataset, content_hash, source_fingerprint
from pipeline.data.mixture.files import Mixture
from pipeline.errors import UserError

__all__ = ["CurateConfig", "RayConfig", "DatasetPlan", "SourceShard", "plan_dataset", "CURATION_FORMAT"]

# Bump when what curation writes changes for the same source and config (part of every run key).
# 2: statistics over every split before filters, train/val outputs, exact quantiles, DROID filter
#    after statistics.
CURATION_FORMAT = 2


@dataclass(kw_only=True)
class RayConfig:
    address: str = helpfield("", "Ray cluster address ('' = RAY_ADDRESS env, else a local cluster)")
    num_cpus: int = helpfield(0, "CPUs of the local cluster (0 = os.cpu_count())")


@dataclass(kw_only=True)
class CurateConfig:
    mixture: str = helpfield(MISSING, "mixture name (dataset_mixtures/NAME.yaml) or YAML path")
    source: str = helpfield(MISSING, "raw data root: <source>/<dataset>/<version>/ (local or gs://)")
    out: str = helpfield(MISSING, f"curated output root: writes <out>/<dataset>/{CURATED_VERSION}/")
    split: str = helpfield("train", "source split OpenVLA trains on (with no 'val' split: its first 95%)")
    seed: int = helpfield(0, "shuffle seed (output is a pure function of source + config)")
    num_shards: int = helpfield(0, "train output shards per dataset (0 = as many as the source split)")
    workers: int = helpfield(0, "max concurrent tasks (0 = every CPU of the Ray cluster)")
    fix_known_issues: bool = helpfield(False, "apply the registry's [fixable] known-issue fixes")
    sketch_k: int = helpfield(DEFAULT_SKETCH_K, "quantile sketch capacity per level (sets how few values the "
                                                "exact q01/q99 pass moves)")
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


@dataclass(frozen=True)
class SourceShard:
    """One source shard to map: its split, its index in the dataset's map order, its role."""

    index: int
    url: str
    num_episodes: int
    role: SplitRole


@dataclass(kw_only=True)
class DatasetPlan:
    name: str
    curated: CuratedDataset
    shards: list  # [SourceShard], every split (train split first, then the others by name)
    features: dict
    proprio_dim: int
    num_buckets: int
    fingerprint: dict
    stats_key: str
    run_key: str
    overrides: dict
    mask: list
    splits: dict  # {source split: {"episodes": n, "use": "..."}}
    validation_source: str  # "val" | "train[95%:]"

    @property
    def out_dir(self) -> str:
        return self.curated.url

    @property
    def parts_dir(self) -> str:
        """The tasks' intermediate files (removed at commit unless ``keep_parts``)."""
        return fs.join(self.out_dir, "_parts")


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


def _split_order(splits: dict, train_split: str) -> list[str]:
    return [train_split] + sorted(s for s in splits if s != train_split)


def _uses(splits: dict, train_split: str) -> tuple[dict, str]:
    """Per source split: episodes and what curation makes of them; and where validation comes from."""
    counts = {s: sum(i.num_episodes for i in shards) for s, shards in splits.items()}
    has_val = has_val_split(splits, train_split)
    uses = {}
    for split in _split_order(splits, train_split):
        if split == train_split:
            n = counts[split]
            use = "train" if has_val else (f"train[:95%] = {train_boundary(n)} episodes -> train, "
                                           f"train[95%:] = {n - train_boundary(n)} -> val")
        else:
            use = "val" if (split == VAL and has_val) else "statistics only"
        uses[split] = {"episodes": counts[split], "use": use}
    return uses, ("val" if has_val else f"{train_split}[95%:]")


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
    if not builder.splits.get(cfg.split):
        raise UserError(f"dataset '{name}' at {builder.url} has no split '{cfg.split}' "
                        f"(has: {', '.join(builder.splits) or 'none'}); set split=...")
    order = _split_order(builder.splits, cfg.split)
    roles = split_roles({s: [i.num_episodes for i in builder.splits[s]] for s in order}, cfg.split)
    shards: list[SourceShard] = []
    for split in order:
        for info, role in zip(builder.splits[split], roles[split]):
            shards.append(SourceShard(len(shards), info.url, info.num_episodes, role))
    override = mixture.overrides.get(name, {})
    filters = _filters_for(cfg, override)
    digest, sizes = source_fingerprint(builder.url, [s.url for s in shards])
    fingerprint = {"url": builder.url, "fingerprint": digest,
                   "shards": [{**sz, "episodes": s.num_episodes, "split": s.role.split} for sz, s in zip(sizes, shards)]}
    stats_key = content_hash(digest, STANDARDIZATION_VERSION, CURATION_FORMAT, dataclasses.asdict(filters),
                             cfg.split, cfg.fix_known_issues, override.get("cameras", {}), *entry_hash(name))
    num_buckets = cfg.num_shards or len(builder.splits[cfg.split])
    run_key = content_hash(stats_key, cfg.seed, num_buckets, cfg.sketch_k, __version__)
    proprio_dim = _probe_proprio_dim(spec, shards, builder.features, cfg)
    uses, validation_source = _uses(builder.splits, cfg.split)
    return DatasetPlan(name=name, curated=CuratedDataset(cfg.out, name), shards=shards,
                       features=builder.features, proprio_dim=proprio_dim, num_buckets=num_buckets,
                       fingerprint=fingerprint, stats_key=stats_key, run_key=run_key,
                       overrides={"filters": dataclasses.asdict(filters), "cameras": override.get("cameras", {})},
                       mask=action_mask(),  # EEF_POS and our 7-D EEF_R6 projection: gripper unnormalized
                       splits=uses, validation_source=validation_source)
