"""``vla mixture show`` and ``vla mixture diff``: per-dataset weights, sizes, shares, draws and passes.

Shares and draws per epoch come from :func:`pipeline.data.mixture.shares.epoch_draws`, the function
the training stream samples with: ``draws_per_epoch`` is exactly how many frames of each dataset an
epoch of the stream holds (the stream counts frames in its record index; it equals the manifest's
``total_frames`` unless shards were damaged after curation). Both counts are read through
:class:`~pipeline.data.manifest.CuratedDataset`: ``frames`` / ``trajectories`` (curated training
split, from the manifest) and ``num_transitions`` (statistics over split ``all``, what size-balanced
shares weight by). Numbers that need curated data (sizes, size-balanced shares, draws, passes) print
as ``?`` (``null`` in ``--json``) when ``curated=`` is not given or a weighted dataset is not
curated there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.config import MISSING, helpfield
from pipeline.data.manifest import CuratedDataset
from pipeline.data.mixture.files import Mixture, load_mixture
from pipeline.data.mixture.shares import EPOCH_DEFINITION, EpochDraws, compute_shares, epoch_draws

__all__ = ["MixtureShowConfig", "MixtureDiffConfig", "mixture_rows", "run_show", "run_diff"]


@dataclass(kw_only=True)
class MixtureShowConfig:
    name: str = helpfield(MISSING, "mixture name (dataset_mixtures/NAME.yaml) or path to a YAML file")
    curated: str = helpfield("", "curated data root (vla curate out=...) for num_transitions and frames")
    json: bool = helpfield(False, "print JSON instead of a table")
    plot: str = helpfield("", "write a PNG bar chart of the shares to this file")
    steps: int = helpfield(0, "planned training steps (with global_batch: passes per run)")
    global_batch: int = helpfield(0, "planned global batch size")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.global_batch < 0:
            raise ValueError("steps and global_batch must be >= 0")


@dataclass(kw_only=True)
class MixtureDiffConfig:
    a: str = helpfield(MISSING, "first mixture (name or path)")
    b: str = helpfield(MISSING, "second mixture (name or path)")
    curated: str = helpfield("", "curated data root for num_transitions (size-balanced shares)")
    json: bool = helpfield(False, "print JSON instead of a table")


def _counts(mixture: Mixture, curated: str) -> dict[str, tuple[int, int, int]]:
    """``(training frames, training trajectories, num_transitions)`` of each curated dataset."""
    if not curated:
        return {}
    out = {}
    for name in mixture.datasets:
        dataset = CuratedDataset(curated, name)
        counts = dataset.counts()
        if counts is not None:
            out[name] = (*counts, dataset.num_transitions())
    return out


def _draws(mixture: Mixture, counts: dict[str, tuple[int, int, int]]) -> EpochDraws | None:
    try:
        return epoch_draws(mixture, {n: c[0] for n, c in counts.items()}, {n: c[2] for n, c in counts.items()})
    except ValueError:  # a weighted dataset is not curated: its counts are unknown
        return None


def _shares(mixture: Mixture, draws: EpochDraws | None) -> dict[str, float] | None:
    """Share per weighted dataset; without frame counts only when shares do not depend on them."""
    if draws is not None:
        return dict(zip(draws.names, draws.shares.tolist()))
    if mixture.balance_by_size:
        return None
    active = mixture.active()
    return dict(zip(active, compute_shares(list(active.values()), [0] * len(active), False).tolist()))


def mixture_rows(mixture: Mixture, curated: str = "", steps: int = 0, global_batch: int = 0) -> list[dict]:
    """One dict per dataset: weight, num_transitions, frames, trajectories, share, draws_per_epoch,
    passes_per_epoch, passes_per_run (a dataset of weight 0 has share and draws 0: the stream leaves it out)."""
    counts = _counts(mixture, curated)
    frames = {n: c[0] for n, c in counts.items()}
    draws = _draws(mixture, counts)
    shares = _shares(mixture, draws)
    draw_counts = dict(zip(draws.names, draws.counts.tolist())) if draws is not None else None
    passes = dict(zip(draws.names, draws.passes_per_epoch().tolist())) if draws is not None else None
    planned = steps * global_batch if steps and global_batch else None
    rows = []
    for name, weight in mixture.datasets.items():
        share = shares.get(name, 0.0) if shares is not None else None
        n = frames.get(name)
        per_epoch = passes.get(name, 0.0) if passes is not None and n else None
        per_run = share * planned / n if share is not None and planned is not None and n else None
        _, trajectories, transitions = counts.get(name, (None, None, None))
        rows.append({"dataset": name, "weight": weight, "num_transitions": transitions, "frames": n,
                     "trajectories": trajectories, "share": share,
                     "draws_per_epoch": draw_counts.get(name, 0) if draw_counts is not None else None,
                     "passes_per_epoch": per_epoch, "passes_per_run": per_run})
    return rows


def _fmt(value, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    cells = [[title for _, title, _ in columns]]
    cells += [[_fmt(r[k], spec) if spec else str(r[k]) for k, _, spec in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plot(rows: list[dict], mixture: Mixture, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["dataset"] for r in rows]
    known = all(r["share"] is not None for r in rows)
    total_w = sum(r["weight"] for r in rows) or 1.0
    values = [r["share"] if known else r["weight"] / total_w for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ax.barh(names[::-1], values[::-1], color="tab:blue")
    ax.set_xlabel("sampling share" if known else "normalized weight (frames unknown)")
    ax.set_title(f"mixture {mixture.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_show(cfg: MixtureShowConfig) -> int:
    mixture = load_mixture(cfg.name)
    rows = mixture_rows(mixture, cfg.curated, cfg.steps, cfg.global_batch)
    if cfg.plot:
        _plot(rows, mixture, cfg.plot)
    draws = [r["draws_per_epoch"] for r in rows]
    epoch = sum(draws) if None not in draws else None
    if cfg.json:
        print(json.dumps({"name": mixture.name, "path": mixture.path, "balance_by_size": mixture.balance_by_size,
                          "epoch_definition": EPOCH_DEFINITION, "epoch_draws": epoch, "datasets": rows}, indent=2))
        return 0
    print(f"mixture {mixture.name} ({mixture.path}): {mixture.description}")
    print(f"balance_by_size: {mixture.balance_by_size}; epoch ({_fmt(epoch, 'd')} draws): {EPOCH_DEFINITION}")
    columns = [("dataset", "dataset", ""), ("weight", "weight", ".4g"), ("num_transitions", "transitions", "d"),
               ("frames", "frames", "d"),
               ("trajectories", "trajs", "d"), ("share", "share", ".4f"), ("draws_per_epoch", "draws/epoch", "d"),
               ("passes_per_epoch", "passes/epoch", ".3f")]
    if cfg.steps and cfg.global_batch:
        columns.append(("passes_per_run", f"passes/run({cfg.steps}x{cfg.global_batch})", ".3f"))
    print(_table(rows, columns))
    print("transitions = num_transitions of the statistics (split all: OpenVLA's size, shares weight by it "
          "when balance_by_size); frames = curated training frames (the epoch draws that many)")
    unknown = [r["dataset"] for r in rows if r["frames"] is None]
    if unknown:
        where = f"not curated under {cfg.curated}" if cfg.curated else "no curated= given"
        print(f"? = unknown: sizes of {len(unknown)} dataset(s) ({where}); shares need them when "
              f"balance_by_size is true, draws and passes always do")
    if cfg.plot:
        print(f"plot written to {cfg.plot}")
    return 0


def run_diff(cfg: MixtureDiffConfig) -> int:
    a, b = load_mixture(cfg.a), load_mixture(cfg.b)
    rows_a = {r["dataset"]: r for r in mixture_rows(a, cfg.curated)}
    rows_b = {r["dataset"]: r for r in mixture_rows(b, cfg.curated)}
    rows = []
    for name in list(rows_a) + [n for n in rows_b if n not in rows_a]:
        ra, rb = rows_a.get(name), rows_b.get(name)
        wa, wb = (ra["weight"] if ra else None), (rb["weight"] if rb else None)
        status = "added" if ra is None else "removed" if rb is None else "changed" if wa != wb else ""
        sa, sb = (ra["share"] if ra else 0.0), (rb["share"] if rb else 0.0)
        delta = sb - sa if sa is not None and sb is not None else None
        rows.append({"dataset": name, "status": status, "weight_a": wa, "weight_b": wb,
                     "share_a": sa, "share_b": sb, "share_delta": delta})
    if a.balance_by_size != b.balance_by_size:
        print(f"balance_by_size: {a.balance_by_size} -> {b.balance_by_size}")
    if cfg.json:
        print(json.dumps({"a": a.name, "b": b.name, "datasets": rows}, indent=2))
        return 0
    changed = [r for r in rows if r["status"] or (r["share_delta"] or 0) != 0]
    print(f"mixture diff {a.name} -> {b.name}: {sum(1 for r in rows if r['status'])} dataset(s) added/removed/"
          f"reweighted")
    if not changed:
        print("no differences")
        return 0
    print(_table(changed, [("dataset", "dataset", ""), ("status", "status", ""), ("weight_a", f"w[{a.name}]", ".4g"),
                           ("weight_b", f"w[{b.name}]", ".4g"), ("share_a", "share_a", ".4f"),
                           ("share_b", "share_b", ".4f"), ("share_delta", "Δshare", "+.4f")]))
    if any(r["share_delta"] is None for r in changed):
        where = f"not all curated under {cfg.curated}" if cfg.curated else "pass curated=ROOT"
        print(f"? = unknown: size-balanced shares need the num_transitions of every dataset ({where})")
    return 0

