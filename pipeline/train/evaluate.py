"""Validation during training: loss and action-token accuracy on a fixed set of validation frames,
every ``eval.every_steps`` optimizer steps, overall and per dataset, into the step's metrics record
(so every sink gets it: ``metrics.jsonl``, TensorBoard ``eval/*``, ``vla plot``).

The validation data is the curated ``val`` split of every weighted dataset that has one: OpenVLA's
validation split (the source's ``val``, or ``train[95%:]``; :mod:`pipeline.data.curate.splits`).
OpenVLA itself never evaluates on it. A second :class:`~pipeline.data.stream.training_stream.TrainingStream`
reads it (seed ``eval.seed``, no augmentation, the run's per-rank batch, decoding in the training
process); the first ``eval.batches`` global batches of its epoch 0 are the validation set. Every
evaluation rewinds that stream to its start: each one sees the same frames, the training stream's
state is never touched, and a resumed run evaluates exactly as an uninterrupted one (the validation
stream is not part of checkpoints: it has no state to carry).

Loss: mean cross-entropy over the supervised tokens (7 action tokens + ``</s>``) of the whole set;
accuracy and L1 as in training (action tokens only). Sums are all-reduced over ranks.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.errors import ConfigError, UserError
from pipeline.train.metrics import action_stats

__all__ = ["EvalConfig", "Evaluator", "build_evaluator"]

log = logging.getLogger("pipeline.train")

_HEAD = 6  # loss_sum, tokens, correct, count, l1, samples; then per dataset (loss_sum, tokens, correct, count)


@dataclass(kw_only=True)
class EvalConfig:
    every_steps: int = field(default=200, metadata={"help": "validation every N optimizer steps (0: off)"})
    batches: int = field(default=4, metadata={"help": "validation batches per rank: the fixed validation set"})
    seed: int = field(default=0, metadata={"help": "seed that draws the fixed validation set (not the training stream's)"})

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ConfigError("every_steps", self.every_steps, "must be >= 0 (0: off)")
        if self.batches < 1:
            raise ConfigError("batches", self.batches, "must be >= 1")


class Evaluator:
    """Runs the fixed validation set through the model (see the module docstring)."""

    def __init__(self, stream: Any, *, every_steps: int, batches: int, device: torch.device,
                 action_tokenizer: Any) -> None:
        self.stream, self.every_steps, self.batches = stream, every_steps, batches
        self.device, self.action_tokenizer = device, action_tokenizer
        self.names = list(stream.dataset_names)
        self._start = stream.state_dict()  # epoch 0, position 0

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def run(self, model: Any) -> dict:
        """Metrics of the validation set (all ranks take part: every rank runs its share)."""
        import torch.distributed as dist

        self.stream.load_state_dict(self._start)
        sums = torch.zeros(_HEAD + 4 * len(self.names), dtype=torch.float64, device=self.device)
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for _ in range(self.batches):
                    batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                             for k, v in next(self.stream).items()}
                    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
                    self._add(sums, out, batch)
        finally:
            model.train(training)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        return self._record(sums.tolist())

    def _add(self, sums: torch.Tensor, out: Any, batch: dict) -> None:
        import torch.nn.functional as F

        labels = batch["labels"]
        per_sample = (labels[:, 1:] != -100).sum(dim=1)
        sample = torch.repeat_interleave(torch.arange(labels.shape[0], device=labels.device), per_sample)
        token_loss = F.cross_entropy(out.logits.float(), out.targets, reduction="none").double()
        loss = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device).index_add(0, sample, token_loss)
        tokens = per_sample.double()
        correct, count, l1 = action_stats(out.predictions, out.targets, labels, self.action_tokenizer)
        for i, value in enumerate((loss, tokens, correct, count, l1, torch.ones_like(loss))):
            sums[i] += value.sum().to(sums.device)
        per = sums[_HEAD:].view(len(self.names), 4)
        idx = batch["dataset_index"].to(self.device).long()
        for j, value in enumerate((loss, tokens, correct, count)):
            per[:, j].index_add_(0, idx, value.to(self.device))

    def _record(self, v: list[float]) -> dict:
        per = [v[_HEAD + 4 * i:_HEAD + 4 * (i + 1)] for i in range(len(self.names))]
        return {
            "eval_loss": v[0] / v[1] if v[1] else None,
            "eval_action_accuracy": v[2] / v[3] if v[3] else None,
            "eval_l1": v[4] / v[3] if v[3] else None,
            "eval_samples": int(v[5]),
            "eval_dataset_loss": {n: (p[0] / p[1] if p[1] else None) for n, p in zip(self.names, per)},
            "eval_dataset_accuracy": {n: (p[2] / p[3] if p[3] else None) for n, p in zip(self.names, per)},
        }

    def close(self) -> None:
        self.stream.close()


def build_evaluator(cfg: Any, *, mixture: Any, prompt_builder: Any, pad_id: int, rank: int, world: int,
                    image_size: int, device: torch.device) -> Evaluator | None:
    """The run's evaluator, or None (eval off, synthetic data, or no validation frames: logged)."""
    from pipeline.data.manifest import CuratedDataset
    from pipeline.data.mixture.files import Mixture
    from pipeline.data.stream.training_stream import TrainingStream

    if cfg.eval.every_steps == 0 or cfg.data.source != "stream":
        return None
    root = cfg.data.data_root
    val = {n: w for n, w in mixture.active().items() if (CuratedDataset(root, n).counts("val") or (0, 0))[1] > 0}
    if not val:
        log.warning("eval: no dataset of mixture %s has validation episodes under %s; validation is off",
                    mixture.name, root)
        return None
    scfg = dataclasses.replace(cfg.data.stream, split="val", augment=False, num_workers=0, prefetch_batches=1,
                               buffer_bytes=max(2**20, cfg.data.stream.buffer_bytes // 8))
    vmix = Mixture(name=f"{mixture.name}[val]", datasets=val, balance_by_size=mixture.balance_by_size)
    try:
        stream = TrainingStream(scfg, data_root=root, batch_size=cfg.per_device_batch, seed=cfg.eval.seed,
                                resolution=cfg.data.resolution or image_size, rank=rank, world_size=world,
                                prompt_builder=prompt_builder, pad_id=pad_id, mixture=vmix)
    except UserError as e:  # fewer validation frames than one global batch
        log.warning("eval: %s; validation is off", e)
        return None
    batches = min(cfg.eval.batches, stream.epoch_length() // stream.global_batch)
    log.info("eval: every %d steps, %d batches x %d ranks x %d frames of %s", cfg.eval.every_steps, batches, world,
             cfg.per_device_batch, ", ".join(val))
    return Evaluator(stream, every_steps=cfg.eval.every_steps, batches=batches, device=device,
                     action_tokenizer=prompt_builder.action_tokenizer)
