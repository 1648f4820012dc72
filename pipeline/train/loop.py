"""The training loop: a list of calls. One step = ``accum`` micro-batches of forward + backward,
grad clip, AdamW update, LR schedule, metrics (all-reduced), validation (every ``eval.every_steps``),
the ``after_step`` hook, stop rule, checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pipeline.train.hooks import TrainHooks
from pipeline.train.metrics import MovingAverage, StepStats, action_stats
from pipeline.train.optim import OptimConfig, clip_grad_norm

if TYPE_CHECKING:
    from pipeline.train.config import StopConfig

__all__ = ["TrainState", "Loop", "run_loop", "train_step", "stop_reason", "stream_epoch", "SignalWatch"]

log = logging.getLogger("pipeline.train")


class TrainState:
    """Counters that survive a restart: step, epoch, LR schedule, stop-rule window (Stateful)."""

    def __init__(self, scheduler: Any, stop_avg: MovingAverage) -> None:
        self.step = 0
        self.epoch = 0.0
        self.scheduler = scheduler
        self.stop_avg = stop_avg

    def state_dict(self) -> dict:
        sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        return {"step": self.step, "epoch": self.epoch, "scheduler": sched,
                "stop_avg": self.stop_avg.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.epoch = float(state.get("epoch", 0.0))
        sched = dict(self.scheduler.state_dict(), **state["scheduler"])
        self.scheduler.load_state_dict(sched)
        self.stop_avg.load_state_dict(state["stop_avg"])


@dataclass(kw_only=True)
class Loop:
    """Everything one step needs: runtime objects, plus the config sections the loop reads."""

    model: Any
    optimizer: Any
    stream: Any
    action_tokenizer: Any
    state: TrainState
    stats: StepStats
    logger: Any
    checkpointer: Any
    device: torch.device
    accum: int
    world_size: int
    peak_flops: float
    dataset_names: list[str]
    stop: StopConfig
    optim: OptimConfig
    hooks: TrainHooks = field(default_factory=TrainHooks)  # after_step (pipeline.train.hooks)
    signals: Any = None  # SignalWatch: SIGTERM -> checkpoint and stop after the current step
    sample_log: Any = None  # metrics.SampleLog (debug.sample_log): per-step (epoch, dataset, episode, frame)
    evaluator: Any = None  # evaluate.Evaluator: validation metrics every eval.every_steps


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _micro_step(loop: Loop, batch: dict, data_wait_s: float) -> None:
    out = loop.model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    (out.loss / loop.accum).backward()
    correct, count, l1 = action_stats(out.predictions, out.targets, batch["labels"], loop.action_tokenizer)
    batch_size, seq_len = batch["input_ids"].shape
    tokens = int(batch["attention_mask"].sum()) + batch_size * int(out.num_visual_tokens)
    flops = batch_size * float(_unwrap(loop.model).flops_per_sample(seq_len))
    loop.stats.add(loss=out.loss, correct=correct, count=count, l1=l1, dataset_index=batch["dataset_index"],
                   tokens=tokens, data_wait_s=data_wait_s, flops=flops)


def stream_epoch(stream: Any) -> float:
    """Fractional epochs consumed: ``epoch + position / epoch_length`` of the stream's state."""
    length = max(1, int(stream.epoch_length()))
    # position == length right after the last batch of an epoch (the epoch counter moves on lazily)
    return float(stream.epoch) + min(float(getattr(stream, "position", 0)), length) / length


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def train_step(loop: Loop) -> dict:
    """One optimizer step over ``accum`` micro-batches; returns the all-reduced metrics record."""
    start = time.perf_counter()
    for _ in range(loop.accum):
        t0 = time.perf_counter()
        batch = _to_device(next(loop.stream), loop.device)
        if loop.sample_log is not None:
            loop.sample_log.add(getattr(loop.stream, "epoch", None), batch.get("meta") or [])
        _micro_step(loop, batch, time.perf_counter() - t0)
    grad_norm = clip_grad_norm(loop.model, loop.optim.grad_clip)
    lr = loop.optimizer.param_groups[0]["lr"]
    loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.state.scheduler.step()
    loop.state.step += 1
    loop.state.epoch = stream_epoch(loop.stream)
    if loop.signals is not None and loop.signals.received:
        loop.stats.flag_signal()
    reduced = loop.stats.reduce()
    if loop.device.type == "cuda":
        torch.cuda.synchronize(loop.device)
    return _record(loop, reduced, lr, float(grad_norm), time.perf_counter() - start)


def _record(loop: Loop, r: dict, lr: float, grad_norm: float, step_time: float) -> dict:
    avg = loop.state.stop_avg.update(r["action_accuracy"])
    mfu = r["flops"] / step_time / (loop.peak_flops * loop.world_size) if loop.peak_flops else None
    per_ds = {name: r["dataset_accuracy"][i] for i, name in enumerate(loop.dataset_names)
              if i < len(r["dataset_accuracy"])}
    return {
        "step": loop.state.step,
        "epoch": loop.state.epoch,
        "loss": r["loss"],
        "action_accuracy": r["action_accuracy"],
        "action_accuracy_avg": avg,
        "l1": r["l1"],
        "lr": lr,
        "grad_norm": grad_norm,
        "samples_per_s": r["samples"] / step_time,
        "tokens_per_s": r["tokens"] / step_time,
        "mfu": mfu,
        "data_wait_pct": 100.0 * r["data_wait_s"] / step_time,
        "step_time_s": step_time,
        "dataset_accuracy": per_ds,
        "time": time.time(),
        "signal": r["signal"],
    }


def stop_reason(avg: MovingAverage, stop: StopConfig, *, step: int, epoch: float) -> str | None:
    """Why training stops after ``step`` (None: keep going). Accuracy first, then the limits."""
    if avg.reached(stop.accuracy):
        return "accuracy"
    if step >= stop.max_steps:
        return "max_steps"
    if stop.max_epochs and epoch >= stop.max_epochs:
        return "max_epochs"
    return None


class SignalWatch:
    """Turns SIGTERM (preemption, torchrun shutting down) into "checkpoint and stop after this step".

    Installed from the main thread only; ``restore()`` puts the previous handler back.
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def install(self) -> SignalWatch:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("got signal %d: checkpointing and stopping after the current step", signum)
        self.received = True

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def run_loop(loop: Loop) -> dict:
    """Train until the stop rule fires (or SIGTERM); checkpoint every ``save_every`` steps and on stop."""
    reason = stop_reason(loop.state.stop_avg, loop.stop, step=loop.state.step, epoch=loop.state.epoch)
    record: dict = {}
    validation: dict = {}
    while reason is None:
        record = train_step(loop)
        if loop.evaluator is not None and loop.evaluator.due(loop.state.step):
            validation = {"step": loop.state.step, **loop.evaluator.run(loop.model)}
            record.update(validation)
        loop.logger.log(loop.state.step, record)
        if loop.sample_log is not None:
            loop.sample_log.write(loop.state.step)  # before the checkpoint of this step
        loop.checkpointer.wait()  # an async save of the previous step overlapped this step: commit it
        loop.hooks.after_step(loop.state.step)
        reason = "signal" if record["signal"] else stop_reason(
            loop.state.stop_avg, loop.stop, step=loop.state.step, epoch=loop.state.epoch)
        loop.checkpointer.save(loop.state.step, force=reason is not None)
    loop.checkpointer.wait()
    return {
        "steps": loop.state.step,
        "stop_reason": reason,
        "final_action_accuracy": record.get("action_accuracy"),
        "final_action_accuracy_avg": loop.state.stop_avg.value,
        "final_loss": record.get("loss"),
        "last_validation": {k: validation[k] for k in ("step", "eval_loss", "eval_action_accuracy") if k in validation},
        "last_checkpoint": loop.checkpointer.last_saved,
    }
