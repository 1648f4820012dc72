"""Training metrics: per-step sums all-reduced across ranks, derived rates, and sinks.

Per micro-batch the loop calls :meth:`StepStats.add` with the loss and the predicted / target
action token ids; at the end of a step :meth:`StepStats.reduce` sums everything over ranks in one
``all_reduce`` and returns plain floats. :class:`MetricsLogger` writes a record per step to
``run_dir/metrics.jsonl``, hands its scalars to the sinks switched on (TensorBoard, Weights &
Biases: :mod:`pipeline.train.metric_sinks`) and drives a tqdm bar, all from rank 0 only.
:class:`MovingAverage` implements the stop rule and is Stateful (checkpointed with the run).
"""

from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.errors import ConfigError

__all__ = [
    "MetricsConfig",
    "StepStats",
    "MovingAverage",
    "MetricsLogger",
    "action_stats",
    "peak_flops",
    "read_metrics",
    "SampleLog",
    "read_sample_log",
]

log = logging.getLogger("pipeline.train")

# dense bf16 peak FLOP/s per device by name fragment (spec sheets); the bench measures its own.
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@dataclass(kw_only=True)
class MetricsConfig:
    log_every: int = field(default=1, metadata={"help": "write a metrics record every N steps"})
    tensorboard: bool = field(default=True, metadata={"help": "also write TensorBoard events (rank 0)"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar on rank 0"})
    peak_tflops: float = field(default=0.0, metadata={"help": "per-device peak for MFU (0: by GPU name; CPU: no MFU)"})
    wandb: bool = field(default=False, metadata={"help": "also log to Weights & Biases (rank 0; needs wandb: "
                                                         "pip install 'vla-pipeline[train]')"})
    wandb_project: str = field(default="vla-pipeline", metadata={"help": "W&B project"})
    wandb_entity: str = field(default="", metadata={"help": "W&B entity (team or user); '' = the key's default"})
    wandb_run_name: str = field(default="", metadata={"help": "W&B run name; '' = the last part of run_dir"})
    wandb_mode: str = field(default="", metadata={"help": "online | offline (files under run_dir/wandb, "
                                                           "`wandb sync` later) | disabled; '' = W&B's default"})

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ConfigError("log_every", self.log_every, "must be >= 1")
        if self.wandb_mode not in ("", "online", "offline", "disabled"):
            raise ConfigError("wandb_mode", self.wandb_mode, "expected online, offline or disabled")


def peak_flops(device: torch.device, override_tflops: float = 0.0) -> float:
    """Peak bf16 FLOP/s of one device; 0.0 when unknown (MFU is then not reported)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, value in _PEAK_BF16.items():
        if key in name:
            return value
    return 0.0


def action_stats(predictions: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                 action_tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (correct, action-token count, L1 sum) from ``VLAOutput.predictions/targets``.

    ``predictions``/``targets``: int64 [N], the supervised positions in row-major order of the
    batch; ``labels`` [B, L] tells how many of them belong to each sample (labels[:, 1:] != -100,
    the HF shift). Only action tokens count (EOS excluded); the L1 is between the decoded
    continuous (normalized) actions of prediction and target.
    """
    per_sample = (labels[:, 1:] != -100).sum(dim=1)
    sample = torch.repeat_interleave(torch.arange(labels.shape[0], device=labels.device), per_sample)
    mask = action_tokenizer.is_action(targets)
    correct_tok = ((predictions == targets) & mask).double()
    l1_tok = (action_tokenizer.decode(predictions) - action_tokenizer.decode(targets)).abs().double() * mask
    zeros = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device)
    correct = zeros.index_add(0, sample, correct_tok)
    count = zeros.index_add(0, sample, mask.double())
    l1 = zeros.index_add(0, sample, l1_tok)
    return correct, count, l1


_HEAD = 10


class StepStats:
    """Sums over the micro-batches of one optimizer step on this rank; reduced across ranks."""

    def __init__(self, num_datasets: int, device: torch.device) -> None:
        self.num_datasets = max(1, num_datasets)
        self.device = device
        self.reset()

    def reset(self) -> None:
        # layout: loss_sum, micro, correct, count, l1, samples, tokens, data_wait, flops, signalled
        # ranks, then per dataset (correct, count) pairs
        self._sums = torch.zeros(_HEAD + 2 * self.num_datasets, dtype=torch.float64, device=self.device)

    def add(self, *, loss: torch.Tensor, correct: torch.Tensor, count: torch.Tensor, l1: torch.Tensor,
            dataset_index: torch.Tensor, tokens: int, data_wait_s: float, flops: float) -> None:
        s = self._sums
        s[0] += loss.detach().double()
        s[1] += 1
        s[2] += correct.sum()
        s[3] += count.sum()
        s[4] += l1.sum()
        s[5] += correct.numel()
        s[6] += tokens
        s[7] += data_wait_s
        s[8] += flops
        idx = dataset_index.to(self.device).long().clamp(0, self.num_datasets - 1)
        per = s[_HEAD:].view(self.num_datasets, 2)
        per[:, 0].index_add_(0, idx, correct.to(self.device))
        per[:, 1].index_add_(0, idx, count.to(self.device))

    def flag_signal(self) -> None:
        """This rank got SIGTERM: every rank learns it from the step's all-reduce."""
        self._sums[9] = 1.0

    def reduce(self) -> dict[str, Any]:
        """All-reduce (sum) over ranks and derive the step's metrics; resets the sums."""
        import torch.distributed as dist

        sums = self._sums.clone()
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            world = dist.get_world_size()
        self.reset()
        v = sums.tolist()
        per = [(v[_HEAD + 2 * i], v[_HEAD + 1 + 2 * i]) for i in range(self.num_datasets)]
        return {
            "loss": v[0] / max(v[1], 1.0),
            "action_accuracy": v[2] / v[3] if v[3] else 0.0,
            "l1": v[4] / v[3] if v[3] else 0.0,
            "samples": int(v[5]),
            "tokens": int(v[6]),
            "data_wait_s": v[7] / world,
            "flops": v[8],
            "signal": v[9] > 0,
            "dataset_accuracy": [c / n if n else None for c, n in per],
        }


class MovingAverage:
    """Mean of the last ``window`` values; Stateful so a resumed run stops at the same step."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"stop.window={window}: must be >= 1")
        self.window = window
        self.values: collections.deque[float] = collections.deque(maxlen=window)

    def update(self, value: float) -> float:
        self.values.append(float(value))
        return self.value

    @property
    def value(self) -> float:
        return sum(self.values) / len(self.values) if self.values else 0.0

    @property
    def full(self) -> bool:
        return len(self.values) == self.window

    def reached(self, threshold: float) -> bool:
        """True once the window is full and its mean is >= ``threshold``."""
        return self.full and self.value >= threshold

    def state_dict(self) -> dict:
        return {"window": self.window, "values": list(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.values = collections.deque((float(x) for x in state["values"]), maxlen=self.window)


def read_metrics(path: str) -> list[dict]:
    """Records of a metrics.jsonl (local or URL); the last record wins for a repeated step."""
    from pipeline import fs

    if not fs.exists(path):
        return []
    by_step: dict[int, dict] = {}
    for line in fs.read_text(path).splitlines():
        rec = _parse_record(line)
        if rec is not None:
            by_step[int(rec["step"])] = rec
    return [by_step[k] for k in sorted(by_step)]


class SampleLog:
    """``debug.sample_log``: one JSON line per optimizer step, ``{"step", "samples": [[epoch, dataset,
    episode_id, frame], ...]}`` of the samples this rank consumed, appended (and flushed) to
    ``run_dir/samples/rank_<r>.jsonl`` before that step's checkpoint. Append-only over restarts: the
    steps a resumed run replays appear again further down; :func:`read_sample_log` keeps the last
    record of each step (the surviving history)."""

    def __init__(self, run_dir: str, rank: int) -> None:
        path = os.path.join(_local_run_dir(run_dir), "samples", f"rank_{rank:05d}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torn = os.path.exists(path) and os.path.getsize(path) > 0 and _last_byte(path) != b"\n"
        self._f = open(path, "a", encoding="utf-8")
        if torn:  # the previous process died mid-line: start ours on a fresh line
            self._f.write("\n")
        self._pending: list[list] = []

    def add(self, epoch: Any, meta: list) -> None:
        self._pending += [[None if epoch is None else int(epoch), str(m[0]), str(m[1]), int(m[2])] for m in meta]

    def write(self, step: int) -> None:
        self._f.write(json.dumps({"step": int(step), "samples": self._pending}) + "\n")
        self._f.flush()
        self._pending = []

    def close(self) -> None:
        self._f.close()


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_sample_log(path: str) -> dict[int, list[list]]:
    """step -> samples of a :class:`SampleLog` file, the last record of each step winning; a torn
    last line (the process died while writing it) is ignored."""
    out: dict[int, list[list]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[int(rec["step"])] = rec["samples"]
    return out


class MetricsLogger:
    """metrics.jsonl + scalar sinks + tqdm, active on rank 0 only. ``close()`` is idempotent.
    ``run_config``: the run's saved (redacted) config.yaml text, recorded by sinks that keep one (W&B)."""

    def __init__(self, cfg: MetricsConfig, *, run_dir: str, rank: int, start_step: int, max_steps: int,
                 dataset_names: list[str], run_config: str = "") -> None:
        self.cfg = cfg
        self.enabled = rank == 0
        self.dataset_names = dataset_names
        self._jsonl = None
        self._sinks: list = []
        self._bar = None
        if not self.enabled:
            return
        self.run_dir = run_dir
        self._local_dir = _local_run_dir(run_dir)
        path = os.path.join(self._local_dir, "metrics.jsonl")
        if self._remote:
            _download_if_exists(fs_join(run_dir, "metrics.jsonl"), path)
        _truncate_after(path, start_step)
        self._jsonl = open(path, "a", encoding="utf-8")
        self._sinks = _build_sinks(cfg, self._local_dir, run_dir, start_step, run_config)
        if cfg.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True,
                             mininterval=1.0)

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['action_accuracy']:.3f}",
                                  refresh=False)
        if step % self.cfg.log_every and "eval_loss" not in record:  # validation records are always kept
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        scalars = list(_scalars(record, self.dataset_names))
        for sink in self._sinks:
            sink.write(step, scalars)

    @property
    def _remote(self) -> bool:
        from pipeline import fs

        return fs.is_remote(self.run_dir)

    def close(self) -> None:
        """Close the sinks; a remote run_dir gets the metrics.jsonl of the local mirror."""
        jsonl = self._jsonl
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()
        for attr in ("_bar", "_jsonl"):
            obj = getattr(self, attr)
            if obj is not None:
                obj.close()
                setattr(self, attr, None)
        if jsonl is not None and self._remote:
            from pipeline import fs

            with open(os.path.join(self._local_dir, "metrics.jsonl"), "rb") as f:
                fs.write_bytes(fs.join(self.run_dir, "metrics.jsonl"), f.read())


def _build_sinks(cfg: MetricsConfig, local_dir: str, run_dir: str, start_step: int, run_config: str) -> list:
    from pipeline.train.metric_sinks import TensorBoardSink, WandbSink

    sinks: list = []
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(os.path.join(local_dir, "tensorboard"), start_step=start_step))
    if cfg.wandb:
        name = os.path.basename(run_dir.rstrip("/")) or "run"
        sinks.append(WandbSink(cfg, local_dir=local_dir, default_name=name, run_config=run_config))
    return sinks


def _scalars(record: dict, names: list[str]):
    for key in ("loss", "action_accuracy", "action_accuracy_avg", "l1", "lr", "grad_norm",
                "samples_per_s", "tokens_per_s", "mfu", "data_wait_pct"):
        if record.get(key) is not None:
            yield f"train/{key}", record[key]
    for name, acc in (record.get("dataset_accuracy") or {}).items():
        if acc is not None and name in names:
            yield f"dataset_accuracy/{name}", acc
    for key in ("loss", "action_accuracy", "l1"):
        if record.get(f"eval_{key}") is not None:
            yield f"eval/{key}", record[f"eval_{key}"]
    for kind in ("loss", "accuracy"):
        for name, value in (record.get(f"eval_dataset_{kind}") or {}).items():
            if value is not None:
                yield f"eval_dataset_{kind}/{name}", value


def _local_run_dir(run_dir: str) -> str:
    """Metrics are appended locally; for a remote run_dir they live in a local mirror dir."""
    from pipeline import fs

    if fs.is_remote(run_dir):
        local = os.path.join(os.path.expanduser("~"), ".cache", "vla-runs", run_dir.replace("://", "/"))
    else:
        local = run_dir
    os.makedirs(local, exist_ok=True)
    return local


def fs_join(url: str, *parts: str) -> str:
    from pipeline import fs

    return fs.join(url, *parts)


def _download_if_exists(url: str, path: str) -> None:
    from pipeline import fs

    if fs.exists(url):
        with open(path, "wb") as f:
            f.write(fs.read_bytes(url))


def _parse_record(line: str) -> dict | None:
    """One metrics record, or None for a blank or torn line (a process killed mid-write)."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and "step" in rec else None


def _truncate_after(path: str, step: int) -> None:
    """Drop records past ``step`` (a resumed run rewrites them) so the file reads as one run."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        recs = [(ln, _parse_record(ln)) for ln in f]
    lines = [ln if ln.endswith("\n") else ln + "\n" for ln, rec in recs if rec is not None and rec["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)
