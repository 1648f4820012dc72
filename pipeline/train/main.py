"""Training entry points.

- ``train(cfg) -> dict``: run in this process as one rank. Joins the process group from the
  torchrun env (or reuses one that exists, e.g. inside a Ray Train worker; or creates a 1-rank
  gloo group), builds tokenizer, model (FSDP2) and stream, trains, returns a summary.
- ``run_train(cfg)``: the ``vla train`` verb. ``nproc > 1`` outside torchrun re-launches itself as
  ``python -m torch.distributed.run --standalone --nproc-per-node N -m pipeline.train.main``.
- ``python -m pipeline.train.main [--config FILE] [key=value ...]``: one rank under torchrun.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from pipeline import fs
from pipeline.config import to_yaml
from pipeline.errors import UserError
from pipeline.train.config import TrainConfig, grad_accum_steps
from pipeline.train.parallel import ParallelDims

__all__ = ["train", "run_train", "main", "rank_main", "resolve_model_init", "shard_model", "validate", "under_torchrun",
           "TrainRecipe"]

if TYPE_CHECKING:
    from pipeline.data.mixture.files import Mixture

log = logging.getLogger("pipeline.train")

# instruction corpus of the offline demo tokenizer (byte-level BPE: any text still encodes)
_DEMO_CORPUS = (
    "pick up the red block", "pick up the green block", "pick up the yellow block", "pick up the orange block",
    "grasp the red block", "move to the red block and lift it", "open the drawer", "close the drawer",
    "put the spoon in the pot", "push the blue cup to the left", "place the can on the plate",
    "stack the green bowl on the towel", "wipe the table with the sponge", "move the lid",
)


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


# -- validation (no writes) --------------------------------------------------------------------------
def validate(cfg: TrainConfig, world_size: int) -> tuple[int, Mixture | None]:
    """Check user input before anything is written; returns the grad-accumulation steps and the data
    mixture, parsed once for the stream (None for synthetic data)."""
    from pipeline import storage

    accum = grad_accum_steps(cfg.global_batch, cfg.per_device_batch, world_size)
    data_root = cfg.data.data_root if cfg.data.source == "stream" else ""
    weights = [(f"model.init.{k}", v, False) for k, v in cfg.model.init.sources.items()]
    for key, url, writable in (("run_dir", cfg.run_dir, True), ("checkpoint.dir", cfg.checkpoint_root, True),
                               ("data.data_root", data_root, False), ("resume", cfg.resume, False), *weights):
        storage.check_location(key, url, writable=writable)
    mixture = _check_data(cfg) if cfg.data.source == "stream" else None
    ParallelDims(world_size=world_size, mode=cfg.fsdp.mode, shard_size=cfg.fsdp.shard_size)  # checks only
    storage.check_reachable("checkpoint.dir", cfg.checkpoint_root)
    if cfg.resume not in ("auto", "none"):
        _check_checkpoint(cfg.resume, cfg)
    elif cfg.resume == "auto":
        from pipeline.train.checkpoint import find_latest

        latest = find_latest(cfg.checkpoint_root)
        if latest:
            check_model_compatible(latest, cfg.model)
    return accum, mixture


def _check_data(cfg: TrainConfig) -> Mixture:
    """The parsed mixture; UserError when the curated root or a weighted dataset's curation is missing."""
    from pipeline.data.manifest import CuratedDataset
    from pipeline.data.mixture.files import load_mixture

    root = cfg.data.data_root
    try:
        root_exists = fs.exists(root)
    except Exception as e:  # noqa: BLE001 - unreachable storage
        raise UserError(f"data.data_root={root}: storage not reachable ({type(e).__name__})") from e
    if not root_exists:
        raise UserError(f"data.data_root={root}: curated data not found (run `vla curate out={root}`)")
    mixture = load_mixture(cfg.data.mixture)
    missing = [n for n in mixture.active() if not CuratedDataset(root, n).is_curated()]
    if missing:
        raise UserError(f"data.mixture={cfg.data.mixture}: datasets not curated under {root}: "
                        f"{', '.join(missing)} (run `vla curate mixture={cfg.data.mixture} out={root}`)")
    return mixture


def _check_checkpoint(url: str, cfg: TrainConfig) -> None:
    from pipeline.train.checkpoint import COMMIT

    try:
        committed = fs.exists(fs.join(url, COMMIT))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"resume={url}: storage not reachable ({type(e).__name__})") from e
    if not committed:
        raise UserError(f"resume={url}: not a committed checkpoint (no {COMMIT} marker)")
    check_model_compatible(url, cfg.model)


_ARCH_KEYS = ("preset", "image_size", "llm_hidden_size", "llm_num_layers", "llm_num_heads", "llm_num_kv_heads",
              "llm_intermediate_size", "vision_depth", "pad_vocab_multiple")


def check_model_compatible(url: str, model_cfg: Any) -> None:
    """UserError when checkpoint ``url`` was saved from another model architecture."""
    path = fs.join(url, "model_config.json")
    if not fs.exists(path):
        raise UserError(f"{url}: no model_config.json (not a checkpoint written by `vla train`)")
    saved = fs.read_json(path)
    ours = model_cfg.resolved().to_dict()
    diff = [f"{k}={saved.get(k)!r} (now {ours.get(k)!r})" for k in _ARCH_KEYS if saved.get(k) != ours.get(k)]
    if diff:
        raise UserError(f"checkpoint {url} is from an incompatible model: {', '.join(diff)}; "
                        f"set model.preset={saved.get('preset')} or start without resume")


# -- building blocks ----------------------------------------------------------------------------------
def _setup_logging(rank: int) -> None:
    """INFO from rank 0, warnings from every rank, each line prefixed with its rank."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank{rank}] %(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(level)  # also when the host (Ray, a notebook) configured logging already


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_tokenizer(cfg: TrainConfig) -> Any:
    from pipeline.model import build_demo_tokenizer, load_text_tokenizer

    if cfg.data.tokenizer == "demo":
        from pipeline.train.synthetic import synthetic_instructions

        return build_demo_tokenizer(list(_DEMO_CORPUS) + synthetic_instructions(cfg.data.synthetic_tasks))
    return load_text_tokenizer(cfg.data.tokenizer)


def build_stream(cfg: TrainConfig, *, prompt_builder: Any, pad_id: int, rank: int, world: int,
                 image_size: int, mixture: Mixture | None = None) -> Any:
    """The synthetic stream, or the TrainingStream of ``mixture`` (the one ``validate`` parsed)."""
    if cfg.data.source == "synthetic":
        from pipeline.train.synthetic import SyntheticStream

        return SyntheticStream(prompt_builder=prompt_builder, pad_id=pad_id, batch_size=cfg.per_device_batch,
                               rank=rank, world_size=world, seed=cfg.data.run_seed(cfg.seed),
                               image_size=cfg.data.resolution or image_size, num_tasks=cfg.data.synthetic_tasks)
    from pipeline.data.stream.training_stream import TrainingStream

    return TrainingStream(cfg.data.stream, data_root=cfg.data.data_root, mixture=mixture,
                          batch_size=cfg.per_device_batch, seed=cfg.data.run_seed(cfg.seed),
                          resolution=cfg.data.resolution or image_size, rank=rank, world_size=world,
                          prompt_builder=prompt_builder, pad_id=pad_id)


def dataset_statistics(cfg: TrainConfig, names: list[str]) -> dict:
    """Merged dataset_statistics.json of the training datasets (identity stats for synthetic)."""
    if cfg.data.source == "synthetic":
        ident = {"mean": [0.0] * 7, "std": [1.0] * 7, "min": [-1.0] * 7, "max": [1.0] * 7,
                 "q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 7}
        return {n: {"action": ident, "num_transitions": 0, "num_trajectories": 0} for n in names}
    from pipeline.data.manifest import CuratedDataset

    out: dict = {}
    for name in names:
        out.update(CuratedDataset(cfg.data.data_root, name).statistics())
    return out


def build_model(cfg: TrainConfig, tokenizer: Any, device: Any, mesh: Any, *,
                resume: str | None) -> tuple[Any, Any]:
    """The VLA, initialized from the run seed identically on every rank, then the pretrained weights
    of ``model.init.*`` (skipped when the run resumes from checkpoint ``resume``), then AC + FSDP2.
    Returns ``(model, LoadReport or None)``."""
    import torch

    from pipeline.model import build_vla
    from pipeline.model.init_weights import apply_init

    torch.manual_seed(cfg.seed)
    model = build_vla(cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, device=device)
    report = None
    if cfg.model.init.sources:
        if resume:
            from pipeline.model.pretrained import LoadReport

            report = LoadReport(sources=cfg.model.init.sources, skipped="the run resumes from a checkpoint")
        else:
            report = apply_init(model, cfg.model.init, tokenizer=tokenizer)
        log.info("model.init: %s", report.line())
    return shard_model(model, cfg, device, mesh), report


def resolve_model_init(cfg: TrainConfig) -> TrainConfig:
    """``model.init.vla``: the run's model config (and, unless given, tokenizer) from that checkpoint."""
    import dataclasses

    from pipeline.model.init_weights import resolve_vla_init

    if not cfg.model.init.vla:
        return cfg
    model_cfg, tokenizer = resolve_vla_init(cfg.model, cfg.data.tokenizer)
    return dataclasses.replace(cfg, model=model_cfg, data=dataclasses.replace(cfg.data, tokenizer=tokenizer))


def shard_model(model: Any, cfg: TrainConfig, device: Any, mesh: Any) -> Any:
    """Attention kernel, activation checkpointing, compile and FSDP2 as ``cfg.fsdp`` says."""
    from pipeline.train.parallel import parallelize, resolve_dtype

    return parallelize(model, mesh, cfg.fsdp,
                       param_dtype=resolve_dtype(cfg.fsdp.param_dtype, device, key="fsdp.param_dtype"),
                       reduce_dtype=resolve_dtype(cfg.fsdp.reduce_dtype, device, key="fsdp.reduce_dtype"))


def _tokenizer_files(tokenizer: Any) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="vla-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        out = {}
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), encoding="utf-8") as f:
                out[f"tokenizer/{name}"] = f.read()
        return out


def _resume_url(cfg: TrainConfig, rank: int) -> str | None:
    from pipeline.train.checkpoint import find_latest
    from pipeline.train.parallel import barrier

    if cfg.resume == "none":
        return None
    if cfg.resume != "auto":
        return cfg.resume
    url = find_latest(cfg.checkpoint_root, clean_partial=False)
    barrier()  # every rank has listed before rank 0 cleans partial dirs up
    if rank == 0:
        find_latest(cfg.checkpoint_root, clean_partial=True)
    if url is not None:
        check_model_compatible(url, cfg.model)
    return url


# -- train ----------------------------------------------------------------------------------------------
class TrainRecipe:
    """The steps of ``train`` that a variant replaces (LoRA fine-tuning: pipeline.train.finetune)."""

    def __init__(self) -> None:
        self.init_report: Any = None

    def tokenizer(self, cfg: TrainConfig) -> Any:
        return build_tokenizer(cfg)

    def model(self, cfg: TrainConfig, tokenizer: Any, device: Any, mesh: Any, *, resume: str | None) -> Any:
        """The sharded model; ``resume``: the checkpoint the run loads next (None: a fresh start)."""
        model, self.init_report = build_model(cfg, tokenizer, device, mesh, resume=resume)
        return model

    def files(self, cfg: TrainConfig, model: Any) -> dict[str, str]:
        """Extra files saved with every checkpoint."""
        return {}

    def summary(self, model: Any) -> dict:
        """Extra keys of the run summary (``init``: what ``model.init.*`` loaded)."""
        return {"init": self.init_report.to_dict()} if self.init_report is not None else {}


def train(cfg: TrainConfig, recipe: TrainRecipe | None = None) -> dict:
    """Train as one rank of the current (or a new) process group; returns the run summary."""
    import torch
    import torch.distributed as dist

    from pipeline.train.hooks import build_hooks
    from pipeline.train.parallel import init_distributed, resolve_device

    device = resolve_device(cfg.device)
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    cfg = resolve_model_init(cfg)
    accum, mixture = validate(cfg, world)  # before the process group exists and before any write
    hooks = build_hooks(cfg.debug)
    created = init_distributed(device)
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(cfg, device, accum, recipe or TrainRecipe(), hooks, mixture)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, device: Any, accum: int, recipe: TrainRecipe, hooks: Any,
           mixture: Mixture | None) -> dict:
    from pipeline.model import ActionPromptBuilder
    from pipeline.train.checkpoint import CheckpointManager, ModelOptimState
    from pipeline.train.evaluate import build_evaluator
    from pipeline.train.hooks import RunInfo
    from pipeline.train.loop import Loop, SignalWatch, TrainState, run_loop, stream_epoch
    from pipeline.train.metrics import MetricsLogger, MovingAverage, SampleLog, StepStats, peak_flops
    from pipeline.train.optim import build_optimizer, build_scheduler
    from pipeline.train.parallel import ParallelDims, rank_and_world

    rank, world = rank_and_world()
    _setup_logging(rank)
    _seed_everything(cfg.seed, cfg.deterministic and device.type == "cpu")
    dims = ParallelDims(world_size=world, mode=cfg.fsdp.mode, shard_size=cfg.fsdp.shard_size,
                        device_type=device.type)
    tokenizer = recipe.tokenizer(cfg)
    builder = ActionPromptBuilder(tokenizer)
    resume = _resume_url(cfg, rank)
    model = recipe.model(cfg, tokenizer, device, dims.mesh, resume=resume)
    image_size = model.config.image_size
    stream = build_stream(cfg, prompt_builder=builder, pad_id=tokenizer.pad_token_id, rank=rank, world=world,
                          image_size=image_size, mixture=mixture)
    names = list(stream.dataset_names)
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState(build_scheduler(optimizer, cfg.optim, cfg.stop.max_steps), MovingAverage(cfg.stop.window))
    files = {"config.yaml": to_yaml(cfg), "model_config.json": json.dumps(model.config.to_dict(), indent=2),
             "dataset_statistics.json": json.dumps(dataset_statistics(cfg, names), indent=2),
             **_tokenizer_files(tokenizer), **recipe.files(cfg, model)}
    ckpt = CheckpointManager(cfg.checkpoint, root=cfg.checkpoint_root, files=files, hooks=hooks,
                             states={"app": ModelOptimState(model, optimizer), "train": state, "data": stream})
    if rank == 0:
        fs.makedirs(cfg.run_dir)
        fs.write_text(fs.join(cfg.run_dir, "config.yaml"), files["config.yaml"])
    if resume:
        ckpt.load(resume)
        state.epoch = stream_epoch(stream)
    logger = MetricsLogger(cfg.metrics, run_dir=cfg.run_dir, rank=rank, start_step=state.step,
                           max_steps=cfg.stop.max_steps, dataset_names=names,
                           run_config=files["config.yaml"])
    evaluator = build_evaluator(cfg, mixture=mixture, prompt_builder=builder, pad_id=tokenizer.pad_token_id,
                                rank=rank, world=world, image_size=image_size, device=device)
    hooks.start(RunInfo(rank=rank, world_size=world, run_dir=cfg.run_dir))
    loop = Loop(model=model, optimizer=optimizer, stream=stream, action_tokenizer=builder.action_tokenizer,
                state=state, stats=StepStats(len(names), device), logger=logger, checkpointer=ckpt, hooks=hooks,
                device=device, accum=accum, world_size=world, peak_flops=peak_flops(device, cfg.metrics.peak_tflops),
                dataset_names=names, stop=cfg.stop, optim=cfg.optim, signals=SignalWatch().install(),
                sample_log=SampleLog(cfg.run_dir, rank) if cfg.debug.sample_log else None, evaluator=evaluator)
    log.info("training: world=%d mesh=%s accum=%d global_batch=%d resume=%s", world, dims.mesh.shape, accum,
             accum * world * cfg.per_device_batch, resume or "-")
    try:
        summary = run_loop(loop)
    finally:
        loop.signals.restore()
        logger.close()
        if loop.sample_log is not None:
            loop.sample_log.close()
        ckpt.close()
        stream.close()
        if evaluator is not None:
            evaluator.close()
    summary.update(run_dir=cfg.run_dir, world_size=world, resumed_from=resume, params=model.num_params(),
                   **recipe.summary(model))
    if rank == 0:
        fs.write_json(fs.join(cfg.run_dir, "summary.json"), summary)
    return summary


# -- CLI ------------------------------------------------------------------------------------------------
def run_train(cfg: TrainConfig) -> int:
    """``vla train``: in-process for nproc=1 (or under torchrun), else re-launch under torchrun."""
    if cfg.nproc == 1 or under_torchrun():
        summary = train(cfg)
        print(json.dumps(summary))
        return 0
    validate(resolve_model_init(cfg), cfg.nproc)
    return launch_torchrun(cfg)


def launch_torchrun(cfg: TrainConfig, extra_env: dict[str, str] | None = None,
                    module: str = "pipeline.train.main") -> int:
    """Run ``cfg`` on ``cfg.nproc`` local ranks via torchrun; prints the summary; returns the exit code."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="vla-train-", delete=False) as f:
        f.write(to_yaml(cfg, redact=False))  # the ranks need the real values (file removed after)
        config_path = f.name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.nproc),
           "-m", module, "--config", config_path]
    env = dict(os.environ, **(extra_env or {}))
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        code = subprocess.call(cmd, env=env)
    finally:
        os.remove(config_path)
    summary_path = fs.join(cfg.run_dir, "summary.json")
    if code == 0 and fs.exists(summary_path):
        print(json.dumps(fs.read_json(summary_path)))
    return code


def rank_main(config_cls: type, entry: Any, argv: list[str] | None = None) -> int:
    """One rank under torchrun: parse ``[--config FILE] [key=value ...]`` into ``config_cls`` and run
    ``entry(cfg)``; a UserError is one redacted ``error:`` line and exit 2, as in the CLI."""
    from pipeline.config import load_argv
    from pipeline.secrets import install, redact

    install()  # like pipeline.cli.main: credentials never reach logs or tracebacks
    try:
        entry(load_argv(config_cls, list(sys.argv[1:] if argv is None else argv)))
    except UserError as e:
        print(redact(f"error: {e}"), file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """One rank of ``vla train`` under torchrun."""
    return rank_main(TrainConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
