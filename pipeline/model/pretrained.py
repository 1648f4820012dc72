"""Load a whole pretrained VLA: a ``vla export`` folder or an OpenVLA / Prismatic HF checkpoint.

    loaded = load_pretrained_vla("openvla/openvla-7b", dtype=torch.bfloat16, device="cuda")
    loaded.model, loaded.text_tokenizer, loaded.norm_stats, loaded.train_config, loaded.report

Locations: a local folder, ``gs://`` (tensors are range-read, nothing is copied to disk), or a
hub id (:mod:`pipeline.model.hub`). The format comes from ``config.json``: ours carries
``format_version`` + ``vla_config``; OpenVLA's is recognized by its fields
(:mod:`pipeline.model.openvla_format`).

Loading is strict (:func:`copy_strict`): every tensor of the checkpoint is used or listed as
deliberately dropped, every tensor of the model is filled, shapes must match; the first tensor
that does not fit is named in one line, before the model is touched. :class:`LoadReport` says
what was loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.hub import resolve_location
from pipeline.model.openvla_format import from_openvla_key, is_openvla_config, vla_config_from_openvla
from pipeline.model.presets import VLAConfig
from pipeline.model.safetensors_io import SafetensorsSource

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "STATS_FILE", "TRAIN_CONFIG_FILE", "DictSource", "LoadReport",
           "ModelDir", "PretrainedVLA", "copy_strict", "is_model_dir", "load_model_dir_into", "load_pretrained_vla",
           "open_model_dir", "plan_strict"]

CONFIG_FILE = "config.json"
STATS_FILE = "dataset_statistics.json"
TRAIN_CONFIG_FILE = "train_config.yaml"
FORMAT_VERSION = 2  # 1: one fp32 model.safetensors; 2: any dtype, sharded or not, model card
_READS = (1, 2)
log = logging.getLogger("pipeline.model")
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.yaml", "README.md"]


@dataclass
class LoadReport:
    """What a pretrained load did. ``missing``/``unexpected`` stay empty: a strict load fails instead."""

    sources: dict[str, str] = field(default_factory=dict)
    loaded: int = 0
    params: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    resized: list[str] = field(default_factory=list)
    random: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.skipped:
            return f"pretrained weights not loaded: {self.skipped}"
        src = ", ".join(f"{k}={v}" for k, v in self.sources.items())
        dropped = sum(self.dropped.values())
        parts = [f"loaded {self.loaded} tensors ({self.params / 1e6:.2f}M params) from {src}",
                 f"dropped {dropped} unused" + (f" ({'; '.join(f'{k}: {n}' for k, n in self.dropped.items())})"
                                                if dropped else ""),
                 f"missing {len(self.missing)}, unexpected {len(self.unexpected)}"]
        if self.resized:
            parts.append("resized " + "; ".join(self.resized))
        if self.random:
            parts.append("random init: " + ", ".join(self.random))
        return "; ".join(parts)


class DictSource:
    """An in-memory state dict with the ``SafetensorsSource`` reading interface."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}

    def keys(self) -> list[str]:
        return list(self._state)

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


Mapping = Callable[[str], tuple[str, str]]  # source key -> ("map", our key) | ("drop", reason) | ("unexpected", "")


def plan_strict(target_shapes: dict[str, tuple[int, ...]], source_shapes: dict[str, tuple[int, ...]],
                mapping: Mapping, *, label: str, pad_rows: frozenset[str] = frozenset()
                ) -> tuple[dict[str, str], dict[str, int]]:
    """Check a load without touching tensors: every source key mapped or dropped, every target key
    covered once, shapes equal (``pad_rows``: targets that may have more rows). Returns
    ``(plan {source key: target key}, {drop reason: count})``; UserError naming the first misfit."""
    plan: dict[str, str] = {}
    dropped: dict[str, int] = {}
    for key in sorted(source_shapes):
        kind, value = mapping(key)
        if kind == "drop":
            dropped[value] = dropped.get(value, 0) + 1
        elif kind == "map" and value in target_shapes and value not in plan.values():
            plan[key] = value
        else:
            raise UserError(f"{label}: unexpected tensor {key} (no such weight in this model)")
    missing = sorted(set(target_shapes) - set(plan.values()))
    if missing:
        raise UserError(f"{label}: no tensor for {missing[0]} ({len(missing)} of the model's weights missing)")
    for key, ours in plan.items():
        got, want = tuple(source_shapes[key]), tuple(target_shapes[ours])
        rows_ok = ours in pad_rows and len(got) == len(want) and got[1:] == want[1:] and got[0] <= want[0]
        if got != want and not rows_ok:
            raise UserError(f"{label}: {key} has shape {list(got)} but the model's {ours} is {list(want)}")
    return plan, dropped


def copy_strict(targets: dict[str, torch.Tensor], source: Any, mapping: Mapping, *, label: str,
                report: LoadReport, pad_rows: frozenset[str] = frozenset()) -> None:
    """Fill every tensor of ``targets`` (our key -> tensor, written in place) from ``source`` after
    :func:`plan_strict` passed. Extra ``pad_rows`` rows get the mean of the source rows."""
    shapes = {k: tuple(v.shape) for k, v in targets.items()}
    plan, dropped = plan_strict(shapes, source.shapes, mapping, label=label, pad_rows=pad_rows)
    with torch.no_grad():
        for key, ours in plan.items():
            src, dst = source.get(key), targets[ours]
            if tuple(src.shape) != tuple(dst.shape):
                n = src.shape[0]
                dst[:n].copy_(src)
                dst[n:].copy_(src.float().mean(dim=0, keepdim=True).expand(dst.shape[0] - n, *dst.shape[1:]))
                report.resized.append(f"{ours}: {n} -> {dst.shape[0]} rows (new rows: mean of the others)")
            else:
                dst.copy_(src)
            report.params += dst.numel()
    report.loaded += len(plan)
    for reason, n in dropped.items():
        report.dropped[reason] = report.dropped.get(reason, 0) + n


# -- model folders ----------------------------------------------------------------------------------
@dataclass
class ModelDir:
    """An opened checkpoint folder: resolved location, ``format`` (vla | openvla), ``config.json``,
    our model config and the text tokenizer saved with it."""

    source: str
    url: str
    format: str
    meta: dict[str, Any]
    vla_config: VLAConfig
    tokenizer: Any

    @property
    def norm_stats(self) -> dict[str, Any]:
        if self.format == "openvla":
            return dict(self.meta.get("norm_stats") or {})
        path = fs.join(self.url, STATS_FILE)
        return fs.read_json(path) if fs.exists(path) else {}

    @property
    def train_config(self) -> str | None:
        path = fs.join(self.url, TRAIN_CONFIG_FILE)
        return fs.read_text(path) if fs.exists(path) else None


def is_model_dir(url: str) -> bool:
    """A folder with ``config.json`` (or a hub id): something :func:`open_model_dir` may read."""
    from pipeline.model.hub import is_hub_id

    return is_hub_id(url) or fs.exists(fs.join(url, CONFIG_FILE))


def open_model_dir(url: str, *, key: str = "checkpoint") -> ModelDir:
    """Resolve ``url``, read its ``config.json`` and tokenizer (``key`` names the setting in errors)."""
    from pipeline.model.text_tokenizer import load_text_tokenizer

    loc = resolve_location(url, key=key, patterns=_HUB_FILES)
    cfg_url = fs.join(loc, CONFIG_FILE)
    if not fs.exists(cfg_url):
        raise UserError(f"{key}={url}: no {CONFIG_FILE}; expected a `vla export` folder or an OpenVLA checkpoint")
    meta = fs.read_json(cfg_url)
    tokenizer = load_text_tokenizer(loc)
    if is_openvla_config(meta):
        cfg = vla_config_from_openvla(meta, tokenizer_len=len(tokenizer), where=f"{key}={url}")
        return ModelDir(url, loc, "openvla", meta, cfg, tokenizer)
    if not isinstance(meta.get("vla_config"), dict):
        raise UserError(f"{cfg_url}: neither a `vla export` config (vla_config) nor an OpenVLA config")
    if meta.get("format_version") not in _READS:
        raise UserError(f"{cfg_url}: format_version={meta.get('format_version')}, this code reads {list(_READS)}")
    try:
        cfg = VLAConfig.from_dict(meta["vla_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{cfg_url}: unreadable vla_config ({str(e).splitlines()[0]})") from e
    return ModelDir(url, loc, "vla", meta, cfg, tokenizer)


def load_model_dir_into(model: Any, d: ModelDir, report: LoadReport, *, key: str = "checkpoint") -> None:
    """Strictly copy the weights of ``d`` into ``model`` (built from the same architecture)."""
    if model.vocab_size != d.vla_config.padded_vocab_size():
        raise UserError(f"{key}={d.source}: the checkpoint has {d.vla_config.padded_vocab_size()} token rows but "
                        f"the model was built with {model.vocab_size} (another tokenizer); use the checkpoint's own")
    if d.format == "openvla":
        kept = [len(enc.blocks) for enc in model.vision]

        def mapping(k: str) -> tuple[str, str]:
            return from_openvla_key(k, kept)
    else:
        def mapping(k: str) -> tuple[str, str]:
            return "map", k
    report.sources[key] = d.source
    with SafetensorsSource(d.url) as source:
        copy_strict(model.state_dict(), source, mapping, label=f"{key}={d.source}", report=report)


@dataclass
class PretrainedVLA:
    """A loaded checkpoint: model, text tokenizer, dataset statistics, saved training config."""

    model: Any
    text_tokenizer: Any
    norm_stats: dict[str, Any]
    train_config: str | None
    format: str
    report: LoadReport
    source: str


def load_pretrained_vla(url: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        key: str = "checkpoint") -> PretrainedVLA:
    """Build the model of checkpoint ``url`` in ``dtype`` on ``device`` and load its weights."""
    from pipeline.model.quantize import default_dtype
    from pipeline.model.vla import VLA

    d = open_model_dir(url, key=key)
    with default_dtype(dtype), torch.device(device):
        model = VLA(d.vla_config)
    report = LoadReport()
    load_model_dir_into(model, d, report, key=key)
    log.info("%s (%s layout): %s", key, d.format, report.line())
    return PretrainedVLA(model, d.tokenizer, d.norm_stats, d.train_config, d.format, report, url)
