"""The training loop: a list of calls. One step = ``accum`` micro-batches of forward + backward,
grad clip, AdamW update, LR schedule, metrics (all-reduced), validation (every ``eval.every_steps``),
stop rule, checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from pipeline import fs
from pipeline.train.metrics import MovingAverage, StepStats, action_stats
from pipeline.train.optim import clip_grad_norm

__all__ = ["TrainState", "Loop", "run_loop", "train_step", "stop_reason", "maybe_crash", "stream_epoch", "SignalWatch"]

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
    """Everything one step needs (runtime objects; the config stays separate)."""

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
    grad_clip: float
    world_size: int
    rank: int
    peak_flops: float
    dataset_names: list[str]
    stop_accuracy: float
    max_steps: int
    max_epochs: float
    crash_at_step: int = -1
    crash_rank: int = 0
    term_at_step: int = -1
    run_dir: str = "."
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
    grad_norm = clip_grad_norm(loop.model, loop.grad_clip)
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


def stop_reason(avg: MovingAverage, *, step: int, epoch: float, accuracy: float, max_steps: int,
                max_epochs: float) -> str | None:
    """Why training stops after ``step`` (None: keep going). Accuracy first, then the limits."""
    if avg.reached(accuracy):
        return "accuracy"
    if step >= max_steps:
        return "max_steps"
    if max_epochs and epoch >= max_epochs:
        return "max_epochs"
    return None


def maybe_crash(loop: Loop) -> None:
    """Fault injection: ``debug.term_at_step`` sends SIGTERM to this rank (a preemption drill);
    ``debug.crash_at_step`` exits hard once, after that step's update."""
    if loop.state.step == loop.term_at_step and loop.rank == loop.crash_rank:
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
    if loop.state.step != loop.crash_at_step or loop.rank != loop.crash_rank:
        return
    marker = fs.join(loop.run_dir, f".crashed_{loop.crash_at_step}")
    if fs.exists(marker):
        return
    fs.write_text(marker, f"rank {loop.rank}\n")
    log.warning("debug.crash_at_step=%d: exiting rank %d", loop.crash_at_step, loop.rank)
    os._exit(1)


def install_save_fault(ckpt: Any, debug: Any, *, run_dir: str) -> None:
    """Fault injection (``debug.save_fault_*``) on this rank's ``CheckpointManager``: once (marker
    ``run_dir/.save_fault_<step>``, holding the pid, written first), inside the save of
    ``save_fault_step`` it SIGKILLs itself (``kill``) or sleeps ``save_pause_s`` (``pause``: a window
    for an external ``kill -9``). Phase ``after_shards``: the DCP shards are written (still in flight
    with ``async_save``), the rank and train-state files are not. ``before_commit``: every file is written (and uploaded, for gs://)."""
    import signal

    name = "_write_small" if debug.save_fault_phase == "after_shards" else "_finalize"
    original = getattr(ckpt, name)

    def hooked(step: int, *args: Any) -> Any:
        marker = fs.join(run_dir, f".save_fault_{step}")
        if step == debug.save_fault_step and not fs.exists(marker):
            if name == "_finalize" and args[1] is not None:
                from pipeline.train.checkpoint import upload_dir

                upload_dir(args[1], args[0])  # remote: the staged files reach the bucket, COMMIT does not
            fs.write_text(marker, f"{os.getpid()}\n")
            log.warning("debug.save_fault=%s in the save of step %d (%s)", debug.save_fault, step,
                        debug.save_fault_phase)
            if debug.save_fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(debug.save_pause_s)
        return original(step, *args)

    setattr(ckpt, name, hooked)


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
    reason = stop_reason(loop.state.stop_avg, step=loop.state.step, epoch=loop.state.epoch,
                         accuracy=loop.stop_accuracy, max_steps=loop.max_steps, max_epochs=loop.max_epochs)
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
        maybe_crash(loop)
        reason = "signal" if record["signal"] else stop_reason(
            loop.state.stop_avg, step=loop.state.step, epoch=loop.state.epoch, accuracy=loop.stop_accuracy,
            max_steps=loop.max_steps, max_epochs=loop.max_epochs)
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
