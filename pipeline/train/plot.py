"""``vla plot run_dir=DIR``: loss / action-accuracy / L1 / per-dataset accuracy curves to one PNG."""

from __future__ import annotations

import io
from dataclasses import dataclass

from pipeline import fs
from pipeline.config import MISSING, helpfield
from pipeline.errors import UserError
from pipeline.train.metrics import read_metrics

__all__ = ["PlotConfig", "run_plot", "plot_run"]


@dataclass(kw_only=True)
class PlotConfig:
    run_dir: str = helpfield(MISSING, "training run dir holding metrics.jsonl")
    out: str = helpfield("", "PNG path (default: <run_dir>/training_curves.png)")


def plot_run(run_dir: str, out: str = "") -> str:
    """Render the curves of ``run_dir/metrics.jsonl``; returns the PNG URL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(fs.join(run_dir, "metrics.jsonl"))
    if not records:
        raise UserError(f"run_dir={run_dir}: no metrics.jsonl records (train first)")
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    _panel(axes[0][0], steps, {"loss": [r["loss"] for r in records],
                               "validation": [r.get("eval_loss") for r in records]}, "loss", log=True)
    _panel(axes[0][1], steps, {"accuracy": [r["action_accuracy"] for r in records],
                               "moving avg": [r.get("action_accuracy_avg") for r in records],
                               "validation": [r.get("eval_action_accuracy") for r in records]},
           "action-token accuracy")
    _panel(axes[1][0], steps, {"L1": [r.get("l1") for r in records]}, "L1 of decoded actions")
    names = sorted({n for r in records for n in (r.get("dataset_accuracy") or {})})
    _panel(axes[1][1], steps, {n: [(r.get("dataset_accuracy") or {}).get(n) for r in records] for n in names},
           "per-dataset action accuracy")
    fig.suptitle(f"{run_dir} ({len(records)} steps)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = out or fs.join(run_dir, "training_curves.png")
    fs.write_bytes(out, buf.getvalue())
    return out


def _panel(ax, steps: list[int], series: dict[str, list], title: str, log: bool = False) -> None:
    for label, values in series.items():
        pts = [(s, v) for s, v in zip(steps, values) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)


def run_plot(cfg: PlotConfig) -> int:
    print(plot_run(cfg.run_dir, cfg.out))
    return 0
