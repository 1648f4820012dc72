"""Write a model folder in our layout (``vla``) or OpenVLA's (``openvla``); read back by :mod:`pipeline.model.pretrained`.

``vla``: ``config.json`` (``format_version`` 2, ``vla_config``, ``dtype``), ``model.safetensors`` or
shards + ``model.safetensors.index.json``, tokenizer files, ``dataset_statistics.json``,
``train_config.yaml`` (when known), ``README.md``.

``openvla``: the same weights under OpenVLA's names (:mod:`pipeline.model.openvla_format`),
``config.json`` with OpenVLA's fields and ``norm_stats``, ``preprocessor_config.json``, tokenizer,
``dataset_statistics.json``, ``README.md``.

``config.json`` is written last: its presence marks a complete folder.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.model_card import TrainingFacts, model_card
from pipeline.model.openvla_format import openvla_config, preprocessor_config, to_openvla_key
from pipeline.model.pretrained import CONFIG_FILE, FORMAT_VERSION, STATS_FILE, TRAIN_CONFIG_FILE
from pipeline.model.safetensors_io import write_sharded

__all__ = ["DTYPES", "FORMATS", "save_model_dir"]

FORMATS = ("vla", "openvla")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_SHARD_BYTES = 5 * 10**9


def _dtype_name(state: dict[str, torch.Tensor], dtype: str | None) -> str:
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
        return dtype
    first = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    return str(first).removeprefix("torch.")


def save_model_dir(model: Any, out_url: str, *, fmt: str = "vla", tokenizer: Any = None,
                   norm_stats: dict[str, Any] | None = None, dtype: str | None = "bfloat16",
                   max_shard_bytes: int = DEFAULT_SHARD_BYTES, state: dict[str, torch.Tensor] | None = None,
                   train: TrainingFacts | None = None, train_config: str | None = None, source: str = "",
                   name: str = "") -> list[str]:
    """Write ``model`` (or ``state``, e.g. an FSDP-gathered state dict, with ``model.config``) to
    ``out_url``; ``dtype``: bfloat16 | float32 | None (as stored). Returns the weight files."""
    if fmt not in FORMATS:
        raise UserError(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    cfg = model.config.resolved()
    stats = dict(norm_stats or {})
    state = state if state is not None else model.state_dict()
    dtype_name = _dtype_name(state, dtype)
    arch = {k: v for k, v in cfg.to_dict().items() if k != "init"}
    if fmt == "openvla":
        if tokenizer is None:
            raise UserError("format=openvla: the tokenizer is required")
        meta = openvla_config(cfg, base_vocab=int(tokenizer.vocab_size), norm_stats=stats, dtype=dtype_name)
        items = [(to_openvla_key(k), v) for k, v in state.items()]
    else:
        meta = {"format_version": FORMAT_VERSION, "vla_config": arch, "dtype": dtype_name}
        items = list(state.items())
    files = write_sharded(items, out_url, dtype=DTYPES.get(dtype_name), max_shard_bytes=max_shard_bytes)
    if tokenizer is not None:
        from pipeline.model.text_tokenizer import save_text_tokenizer

        save_text_tokenizer(tokenizer, out_url)
    fs.write_json(fs.join(out_url, STATS_FILE), stats)
    if fmt == "openvla":
        fs.write_json(fs.join(out_url, "preprocessor_config.json"), preprocessor_config(cfg))
    if train_config:
        fs.write_text(fs.join(out_url, TRAIN_CONFIG_FILE), train_config)
    params = sum(t.numel() for t in state.values())
    weight_files = [f for f in files if f.endswith(".safetensors")]
    card = model_card(name=name or fs.basename(out_url), fmt=fmt, cfg=cfg, params=params, stats=stats, train=train,
                      dtype=dtype_name, files=weight_files, source=source)
    fs.write_text(fs.join(out_url, "README.md"), card)
    fs.write_json(fs.join(out_url, CONFIG_FILE), meta)  # last: marks a complete folder
    return files
