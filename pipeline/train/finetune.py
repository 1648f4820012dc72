"""``vla finetune``: LoRA fine-tuning of a trained VLA on new data (``peft``), with the pretraining loop.

    vla finetune base=<export dir | checkpoint> data.data_root=<curated> data.mixture=<yaml> \\
        lora.rank=32 [nproc=N] [run_dir=runs/finetune]

``base`` is a model folder: a ``vla export`` / ``save_model_dir`` dir or an OpenVLA / Prismatic
HF checkpoint (config.json + safetensors + tokenizer; local, gs:// or a hub id such as
``openvla/openvla-7b``), or a training checkpoint (a ``step_*`` dir with COMMIT, a checkpoints root
or a run dir: the latest committed one; a LoRA checkpoint is merged first). The model architecture
and the text tokenizer come from the base; ``model.*`` and ``data.tokenizer`` are ignored.

Everything else is ``vla train``: :func:`pipeline.train.main.train` runs with :class:`FinetuneRecipe`
(load the base, inject LoRA adapters, freeze the rest, then AC + FSDP2 as in pretraining), so
metrics, the stop rule, checkpoints (DCP model incl. frozen weights + optimizer of the adapters
only, ``lora_config.json``), ``resume=auto`` (bit-identical on CPU) and ``nproc=N`` (torchrun
re-launch) behave the same. The dataset statistics saved with checkpoints and exports are those
of the fine-tuning data, so ``predict_action(unnorm_key=<new dataset>)`` works on the export.
At the end (``lora.merge_on_export``) the adapters are merged into the weights and exported to
``export_dir`` (default ``<run_dir>/export``) in the ``vla export`` format; ``lora.save_adapter``
also writes the un-merged adapters as a standalone peft adapter (``<run_dir>/adapter``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from pipeline import fs
from pipeline.config import MISSING, helpfield
from pipeline.data.stream.training_stream import StreamConfig
from pipeline.errors import ConfigError, UserError
from pipeline.train.config import DataConfig, TrainConfig
from pipeline.train.lora import LoRAConfig
from pipeline.train.main import TrainRecipe, rank_main, shard_model
from pipeline.train.optim import OptimConfig

__all__ = ["FinetuneConfig", "FinetuneRecipe", "BaseModel", "resolve_base", "finetune", "run_finetune", "main"]

log = logging.getLogger("pipeline.train")


@dataclass(kw_only=True)
class FinetuneConfig(TrainConfig):
    """``TrainConfig`` + the base model + the LoRA adapters (OpenVLA LoRA defaults: lr 5e-4, rank 32)."""

    base: str = helpfield(MISSING, "base model: a `vla export` dir, an OpenVLA checkpoint (local, gs://, hub id) or a training checkpoint (step dir / run dir)")
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    export_dir: str = helpfield("", "merged export written at the end (empty: <run_dir>/export)")
    run_dir: str = helpfield("runs/finetune", "metrics, TensorBoard, checkpoints (local dir)")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4))
    data: DataConfig = field(default_factory=lambda: DataConfig(stream=StreamConfig(num_workers=0, augment=True)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base != MISSING and not str(self.base).strip():
            raise ConfigError("base", self.base, "expected a `vla export` dir or a training checkpoint URL")

    def _check_weights_sources(self) -> None:
        return  # the base supplies both the model and its tokenizer

    @property
    def merged_export_dir(self) -> str:
        return self.export_dir or fs.join(self.run_dir, "export")


@dataclass(frozen=True)
class BaseModel:
    """A resolved ``base``: ``kind`` export | checkpoint, its URL, model config and tokenizer dir."""

    kind: str
    url: str
    model_config: dict
    tokenizer_url: str


def resolve_base(url: str) -> BaseModel:
    """Which kind of base ``url`` is (checks only; small files are read, no weights)."""
    from pipeline.model.pretrained import is_model_dir, open_model_dir
    from pipeline.train.export import resolve_checkpoint

    try:
        model_dir = is_model_dir(url)
    except Exception as e:  # noqa: BLE001 - unreachable storage, bad URL
        raise UserError(f"base={url}: storage not reachable ({type(e).__name__})") from e
    if model_dir:  # a `vla export` folder or an OpenVLA checkpoint (local, gs://, hub id)
        d = open_model_dir(url, key="base")
        return BaseModel("export", d.url, d.vla_config.to_dict(), d.url)
    try:
        step = resolve_checkpoint(url)
    except UserError:
        raise UserError(f"base={url}: neither a model folder (`vla export` or OpenVLA checkpoint: config.json + "
                        "weights) nor a training checkpoint (step_* dir with COMMIT, checkpoints root or run dir)"
                        ) from None
    return BaseModel("checkpoint", step, fs.read_json(fs.join(step, "model_config.json")),
                     fs.join(step, "tokenizer"))


def _load_base(base: BaseModel, device: Any) -> tuple[Any, Any]:
    """``(model, LoadReport or None)`` of the base on ``device`` (float32)."""
    from pipeline.model.pretrained import load_pretrained_vla
    from pipeline.train.export import load_checkpoint_model

    if base.kind == "export":
        loaded = load_pretrained_vla(base.url, device=device, key="base")
        return loaded.model, loaded.report
    return load_checkpoint_model(base.url).to(device), None


class FinetuneRecipe(TrainRecipe):
    """Tokenizer and model from the base; LoRA adapters injected before FSDP2."""

    def __init__(self, cfg: FinetuneConfig, base: BaseModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.base = base
        self.spec: dict = {}
        self.counts: dict = {}

    def tokenizer(self, cfg: TrainConfig) -> Any:
        from pipeline.model import load_text_tokenizer

        return load_text_tokenizer(self.base.tokenizer_url)

    def model(self, cfg: TrainConfig, tokenizer: Any, device: Any, mesh: Any, *, resume: str | None) -> Any:
        import torch

        from pipeline.train.lora import apply_lora, trainable_summary
        from pipeline.train.parallel import rank_and_world

        model, self.init_report = _load_base(self.base, device)
        if self.init_report is not None and rank_and_world()[0] == 0:
            log.info("base: %s", self.init_report.line())
        if model.vocab_size != model.config.padded_vocab_size(len(tokenizer)):
            raise UserError(f"base={self.base.url}: tokenizer has {len(tokenizer)} tokens but the model "
                            f"{model.vocab_size} rows (tokenizer and weights from different runs?)")
        torch.manual_seed(cfg.seed)  # the LoRA init: identical on every rank and on resume
        model, self.spec = apply_lora(model, self.cfg.lora)
        self.counts = trainable_summary(model)
        if rank_and_world()[0] == 0:
            line = (f"trainable parameters: {self.counts['trainable_params']:,} of {self.counts['total_params']:,} "
                    f"({100 * self.counts['trainable_fraction']:.2f}%), LoRA rank {self.spec['rank']} "
                    f"alpha {self.spec['alpha']:g} on {len(self.spec['targets'])} layers")
            print(line, flush=True)
            log.info(line)
        return shard_model(model, cfg, device, mesh)

    def files(self, cfg: TrainConfig, model: Any) -> dict[str, str]:
        from pipeline.train.lora import LORA_FILE

        return {LORA_FILE: json.dumps(self.spec, indent=2),
                "base.json": json.dumps({"kind": self.base.kind, "url": self.base.url}, indent=2)}

    def summary(self, model: Any) -> dict:
        return {**self.counts, **super().summary(model), "base": self.base.url, "lora_rank": self.spec.get("rank")}


def prepare(cfg: FinetuneConfig) -> tuple[FinetuneConfig, BaseModel]:
    """Resolve ``base`` and take its model config (the run's ``model`` section)."""
    from pipeline.model import InitConfig, VLAConfig

    if cfg.base == MISSING:
        raise UserError("base: required (a `vla export` dir or a training checkpoint URL)")
    base = resolve_base(cfg.base)
    try:  # the base's weights are the start: its own model.init.* does not apply again
        model_cfg = dataclasses.replace(VLAConfig.from_dict(base.model_config), init=InitConfig())
    except (TypeError, ValueError) as e:
        raise UserError(f"base={cfg.base}: unreadable model config ({str(e).splitlines()[0]})") from e
    return dataclasses.replace(cfg, model=model_cfg), base


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune as one rank of the current (or a new) process group; returns the run summary."""
    from pipeline.train.main import train

    cfg, base = prepare(cfg)
    return train(cfg, FinetuneRecipe(cfg, base))


def export_merged(cfg: FinetuneConfig, summary: dict) -> str | None:
    """Merge the adapters of the run's last checkpoint and export them (``vla export`` format); with
    ``lora.save_adapter`` also write the adapters alone (peft layout) to ``<run_dir>/adapter``."""
    from pipeline.train.export import export_checkpoint

    last = summary.get("last_checkpoint")
    if not cfg.lora.merge_on_export or not last:
        return None
    adapter = fs.join(cfg.run_dir, "adapter") if cfg.lora.save_adapter else ""
    export_checkpoint(last, cfg.merged_export_dir, overwrite=True, adapter=adapter)
    return cfg.merged_export_dir


def run_finetune(cfg: FinetuneConfig) -> int:
    """``vla finetune``: in-process for nproc=1 (or under torchrun), else re-launch under torchrun."""
    from pipeline.train.main import launch_torchrun, under_torchrun, validate

    cfg, base = prepare(cfg)
    if cfg.nproc == 1 or under_torchrun():
        from pipeline.train.main import train

        summary = train(cfg, FinetuneRecipe(cfg, base))
        print(json.dumps(summary))
    else:
        validate(cfg, cfg.nproc)
        code = launch_torchrun(cfg, module="pipeline.train.finetune")
        if code != 0:
            return code
        summary = fs.read_json(fs.join(cfg.run_dir, "summary.json"))
    if int(os.environ.get("RANK", "0")) == 0:
        out = export_merged(cfg, summary)
        if out:
            print(f"merged LoRA export: {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """One rank of ``vla finetune`` under torchrun."""
    return rank_main(FinetuneConfig, finetune, argv)


if __name__ == "__main__":
    sys.exit(main())
