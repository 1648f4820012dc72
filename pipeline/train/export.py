"""``vla export``: consolidate a DCP training checkpoint into a one-call-loadable HF-style directory.

    vla export checkpoint=<run_dir | checkpoints root | step dir URL> out=<dir or gs://...>

Writes ``config.json`` + ``model.safetensors`` (``VLA.save_pretrained``), the tokenizer files,
``dataset_statistics.json`` and the training ``train_config.yaml``. Load it back with
:func:`load_exported` (model, tokenizer, statistics) or ``VLA.from_pretrained(out)``.
The sharded checkpoint is read by a single process without a process group (DCP reshards to one).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from pipeline import fs
from pipeline.config import MISSING, helpfield
from pipeline.errors import UserError

__all__ = ["ExportConfig", "run_export", "export_checkpoint", "load_exported", "resolve_checkpoint",
           "load_checkpoint_model"]


@dataclass(kw_only=True)
class ExportConfig:
    checkpoint: str = helpfield(MISSING, "a step_* checkpoint dir, a checkpoints root or a run dir (latest committed)")
    out: str = helpfield(MISSING, "output dir (local or gs://); must be empty or absent")
    overwrite: bool = helpfield(False, "replace an existing export in `out`")


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


def _load_model(local: str, url: str) -> Any:
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
    return merge_lora(model).eval() if os.path.exists(lora) else model.eval()


def export_checkpoint(checkpoint: str, out: str, *, overwrite: bool = False) -> str:
    """Export checkpoint ``checkpoint`` to ``out``; returns the step dir that was exported."""
    from pipeline.train.checkpoint import download_dir

    url = resolve_checkpoint(checkpoint)
    if fs.exists(out) and fs.listdir(out) and not overwrite:
        raise UserError(f"out={out}: directory is not empty (pass overwrite=true to replace it)")
    local, tmp = (download_dir(url), True) if fs.is_remote(url) else (fs.get_fs(url)[1], False)
    try:
        model = _load_model(local, url)
        stats = fs.read_json(os.path.join(local, "dataset_statistics.json"))
        if overwrite and fs.exists(out):
            fs.remove(out, recursive=True)
        tok_dir = os.path.join(local, "tokenizer")
        for name in sorted(os.listdir(tok_dir)):
            with open(os.path.join(tok_dir, name), "rb") as f:
                fs.write_bytes(fs.join(out, name), f.read())
        with open(os.path.join(local, "config.yaml"), "rb") as f:
            fs.write_bytes(fs.join(out, "train_config.yaml"), f.read())
        model.save_pretrained(out, extra_json={"dataset_statistics.json": stats})  # config.json last
    finally:
        if tmp:
            shutil.rmtree(local, ignore_errors=True)
    return url


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
    from pipeline.model import VLA, load_text_tokenizer

    model = VLA.from_pretrained(url, device=device).eval()
    tokenizer = load_text_tokenizer(url)
    return model, tokenizer, fs.read_json(fs.join(url, "dataset_statistics.json"))


def run_export(cfg: ExportConfig) -> int:
    step_dir = export_checkpoint(cfg.checkpoint, cfg.out, overwrite=cfg.overwrite)
    print(f"exported {step_dir} -> {cfg.out}")
    return 0

