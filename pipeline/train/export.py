"""``vla export``: a training checkpoint (or a model folder) -> a one-call-loadable model folder.

    vla export checkpoint=<run_dir | checkpoints root | step dir | model folder> out=<dir or gs://...> \
        [format=vla|openvla] [dtype=bfloat16|float32] [max_shard_size=5GB] [adapter=<dir>]

``format=vla`` (default): our layout (``config.json`` + ``model*.safetensors`` (+ index) + tokenizer +
``dataset_statistics.json`` + ``train_config.yaml`` + ``README.md`` model card);
``format=openvla``: OpenVLA's HF layout (:mod:`pipeline.model.openvla_format`). Weights are bf16 by
default, in shards of at most ``max_shard_size``. ``checkpoint`` may also be a model folder (either
layout, local, gs:// or hub id): the export then converts it. ``adapter=DIR`` (LoRA checkpoints of
``vla finetune``): also write the un-merged adapters as a standalone peft adapter.

Load an export with :func:`load_exported` (model, tokenizer, statistics), ``pipeline.model.pretrained.load_pretrained_vla``
or ``VLAPolicy.from_pretrained``. The sharded checkpoint is read by a single process without a
process group (DCP reshards to one).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import yaml

from pipeline import fs
from pipeline.config import MISSING, helpfield
from pipeline.errors import UserError

__all__ = ["ExportConfig", "run_export", "export_checkpoint", "load_exported", "resolve_checkpoint",
           "load_checkpoint_model", "training_facts"]


@dataclass(kw_only=True)
class ExportConfig:
    checkpoint: str = helpfield(MISSING, "a step_* checkpoint dir, a checkpoints root or a run dir (latest committed), "
                                         "or a model folder to convert (`vla export` or OpenVLA; local, gs://, hub id)")
    out: str = helpfield(MISSING, "output dir (local or gs://); must be empty or absent")
    overwrite: bool = helpfield(False, "replace an existing export in `out`")
    format: str = helpfield("vla", "vla (this project's layout) | openvla (OpenVLA / Prismatic HF layout)")
    dtype: str = helpfield("bfloat16", "weights dtype: bfloat16 | float32")
    max_shard_size: str = helpfield("5GB", "largest weights file (e.g. 5GB, 500MB); more -> shards + index")
    adapter: str = helpfield("", "LoRA checkpoints: also write the adapters as a standalone peft adapter dir here")

    def __post_init__(self) -> None:
        from pipeline.model.safetensors_io import parse_size

        if self.format not in ("vla", "openvla"):
            raise UserError(f"format={self.format!r}: expected vla or openvla")
        if self.dtype not in ("bfloat16", "float32"):
            raise UserError(f"dtype={self.dtype!r}: expected bfloat16 or float32")
        parse_size(self.max_shard_size)


def resolve_checkpoint(url: str) -> str:
    """The committed step dir that ``url`` names (itself, or the latest under it or its checkpoints/)."""
    from pipeline.train.checkpoint import COMMIT, find_latest

    try:
        if fs.exists(fs.join(url, COMMIT)):
            return url
        for root in (url, fs.join(url, "checkpoints")):
            latest = find_latest(root)
            if latest:
                return latest
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - unreachable storage, bad URL
        raise UserError(f"checkpoint={url}: storage not reachable ({type(e).__name__})") from e
    raise UserError(f"checkpoint={url}: no committed checkpoint found (expected a step_* dir with a COMMIT marker)")


def _load_model(local: str, url: str, *, merge: bool = True) -> Any:
    import torch.distributed.checkpoint as dcp

    from pipeline.model import VLAConfig, build_vla
    from pipeline.train.checkpoint import ModelOptimState, check_shapes
    from pipeline.train.lora import LORA_FILE, apply_lora_spec, merge_lora

    try:
        cfg = VLAConfig.from_dict(fs.read_json(os.path.join(local, "model_config.json")))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"checkpoint {url}: unreadable model_config.json ({str(e).splitlines()[0]})") from e
    model = build_vla(cfg)
    lora = os.path.join(local, LORA_FILE)
    if os.path.exists(lora):  # a `vla finetune` checkpoint: same adapters, load, then merge into the weights
        apply_lora_spec(model, fs.read_json(lora))
    check_shapes(local, model, url)
    dcp.load({"app": ModelOptimState(model, None)}, storage_reader=dcp.FileSystemReader(local), no_dist=True)
    return merge_lora(model).eval() if merge and os.path.exists(lora) else model.eval()


def training_facts(local: str, url: str) -> Any:
    """What the checkpoint files at ``local`` say about their run (for the model card)."""
    from pipeline.model.model_card import TrainingFacts

    def read(name: str) -> Any:
        path = os.path.join(local, name)
        return fs.read_json(path) if os.path.exists(path) else {}

    path = os.path.join(local, "config.yaml")
    cfg = (yaml.safe_load(fs.read_text(path)) if os.path.exists(path) else None) or {}
    state, data = read("train_state.json"), cfg.get("data") or {}
    window = (state.get("stop_avg") or {}).get("values") or []
    per_step = int(cfg.get("per_device_batch") or 0) * int(state.get("world_size") or 0)
    init = {k: v for k, v in ((cfg.get("model") or {}).get("init") or {}).items() if v}
    return TrainingFacts(
        checkpoint=url, mixture="synthetic" if data.get("source") == "synthetic" else str(data.get("mixture", "")),
        data_root="" if data.get("source") == "synthetic" else str(data.get("data_root", "")),
        step=state.get("step"), epoch=state.get("epoch"),
        action_accuracy=sum(window) / len(window) if window else None, accuracy_window=len(window) or None,
        global_batch=int(cfg.get("global_batch") or 0) or per_step or None,
        base=str(read("base.json").get("url", "")), init=init, lora=read("lora_config.json"))


def export_checkpoint(checkpoint: str, out: str, *, overwrite: bool = False, fmt: str = "vla",
                      dtype: str = "bfloat16", max_shard_size: str = "5GB", adapter: str = "") -> str:
    """Export ``checkpoint`` (training checkpoint or model folder) to ``out``; returns what was exported
    (the step dir, or the model folder's URL)."""
    from pipeline.model.export_format import save_model_dir
    from pipeline.model.pretrained import is_model_dir
    from pipeline.model.safetensors_io import parse_size
    from pipeline.model.text_tokenizer import load_text_tokenizer
    from pipeline.train.checkpoint import COMMIT, download_dir

    shard_bytes = parse_size(max_shard_size)
    if fs.exists(out) and fs.listdir(out) and not overwrite:
        raise UserError(f"out={out}: directory is not empty (pass overwrite=true to replace it)")
    if not fs.exists(fs.join(checkpoint, COMMIT)) and is_model_dir(checkpoint):
        return _convert(checkpoint, out, overwrite=overwrite, fmt=fmt, dtype=dtype, shard_bytes=shard_bytes,
                        adapter=adapter)
    url = resolve_checkpoint(checkpoint)
    local, tmp = (download_dir(url), True) if fs.is_remote(url) else (fs.get_fs(url)[1], False)
    try:
        model = _load_model(local, url, merge=False)
        lora = os.path.join(local, "lora_config.json")
        facts = training_facts(local, url)
        if adapter:
            from pipeline.train.peft_adapter import save_peft_adapter

            spec = fs.read_json(lora) if os.path.exists(lora) else {}
            save_peft_adapter(model, spec, adapter, fmt=fmt, base=facts.base)
        if os.path.exists(lora):
            from pipeline.train.lora import merge_lora

            model = merge_lora(model).eval()
        stats = fs.read_json(os.path.join(local, "dataset_statistics.json"))
        tokenizer = load_text_tokenizer(os.path.join(local, "tokenizer"))
        with open(os.path.join(local, "config.yaml"), encoding="utf-8") as f:
            train_config = f.read()
        if overwrite and fs.exists(out):
            fs.remove(out, recursive=True)
        save_model_dir(model, out, fmt=fmt, tokenizer=tokenizer, norm_stats=stats, dtype=dtype,
                       max_shard_bytes=shard_bytes, train=facts, train_config=train_config,
                       source=url)
    finally:
        if tmp:
            shutil.rmtree(local, ignore_errors=True)
    return url


def _convert(src: str, out: str, *, overwrite: bool, fmt: str, dtype: str, shard_bytes: int, adapter: str) -> str:
    """A model folder (ours or OpenVLA's) re-written in ``fmt``."""
    from pipeline.model.export_format import DTYPES, save_model_dir
    from pipeline.model.pretrained import load_pretrained_vla

    if adapter:
        raise UserError(f"adapter={adapter}: only a LoRA training checkpoint of `vla finetune` has adapters; "
                        f"{src} is a model folder")
    # built in the dtype it is written in (no fp32 copy of a bf16 model); save_model_dir refuses unknown ones
    loaded = load_pretrained_vla(src, dtype=DTYPES.get(dtype, DTYPES["float32"]))
    if overwrite and fs.exists(out):
        fs.remove(out, recursive=True)
    save_model_dir(loaded.model, out, fmt=fmt, tokenizer=loaded.text_tokenizer, norm_stats=loaded.norm_stats,
                   dtype=dtype, max_shard_bytes=shard_bytes, train_config=loaded.train_config, source=src)
    return src


def load_checkpoint_model(checkpoint: str) -> Any:
    """The plain VLA of a committed checkpoint (step dir, checkpoints root or run dir); LoRA merged."""
    from pipeline.train.checkpoint import download_dir

    url = resolve_checkpoint(checkpoint)
    local, tmp = (download_dir(url), True) if fs.is_remote(url) else (fs.get_fs(url)[1], False)
    try:
        return _load_model(local, url)
    finally:
        if tmp:
            shutil.rmtree(local, ignore_errors=True)


def load_exported(url: str, *, device: str = "cpu") -> tuple[Any, Any, dict]:
    """``(model, tokenizer, dataset_statistics)`` of an export, ready for inference."""
    from pipeline.model.pretrained import STATS_FILE, load_pretrained_vla

    loaded = load_pretrained_vla(url, device=device)  # reads the tokenizer too
    # an export must carry its statistics file (the loader reads a missing one as "no statistics")
    return loaded.model.eval(), loaded.text_tokenizer, fs.read_json(fs.join(url, STATS_FILE))


def run_export(cfg: ExportConfig) -> int:
    src = export_checkpoint(cfg.checkpoint, cfg.out, overwrite=cfg.overwrite, fmt=cfg.format, dtype=cfg.dtype,
                            max_shard_size=cfg.max_shard_size, adapter=cfg.adapter)
    print(f"exported {src} -> {cfg.out} (format={cfg.format}, {cfg.dtype})"
          + (f"; peft adapter -> {cfg.adapter}" if cfg.adapter else ""))
    return 0

