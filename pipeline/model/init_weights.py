"""Pretrained initialization for ``vla train`` (``model.init.*``).

Parts (any subset; the rest keeps its random init and is listed as such):

- ``model.init.dino`` / ``model.init.siglip``: a vision tower from timm weights: a ``.safetensors`` /
  ``.bin`` / ``.pth`` file, or a folder holding ``model.safetensors`` (timm's hub layout,
  ``timm.models.save_for_hf``) or an open_clip file; local, ``gs://`` or a hub id. timm's own
  ``checkpoint_filter_fn`` adapts the tensors (e.g. DINOv2's 518 px position table resampled to
  224 px), then the blocks after the feature block, the final norm and pooling heads are dropped.
- ``model.init.projector``: a ``.safetensors`` file with our names (``0/2/4.*``) or Prismatic's
  (``fc1/fc2/fc3.*``), optionally prefixed ``projector.``.
- ``model.init.llm``: a Hugging Face Llama folder (``config.json`` + ``model*.safetensors``); its
  token rows (Llama-2: 32000) are padded to the model's (32001 with ``<PAD>`` -> 32064), new rows
  = the mean of the pretrained ones.
- ``model.init.vla``: a whole VLA (``vla export`` folder or OpenVLA checkpoint); the run's model
  config and, unless ``data.tokenizer`` is given, its tokenizer come from it.

Every load is strict (see :func:`pipeline.model.pretrained.copy_strict`) and returns a
:class:`~pipeline.model.pretrained.LoadReport`.
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
from typing import Any

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.presets import InitConfig

__all__ = ["apply_init", "check_tokenizer_choice", "resolve_vla_init"]

_TIMM_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_LLM_ARCH = (("hidden_size", "llm_hidden_size"), ("intermediate_size", "llm_intermediate_size"),
             ("num_hidden_layers", "llm_num_layers"), ("num_attention_heads", "llm_num_heads"),
             ("num_key_value_heads", "llm_num_kv_heads"))


def check_tokenizer_choice(model_cfg: Any, tokenizer: str) -> None:
    """Parse-time refusal of a 7b model with the demo tokenizer (one line)."""
    if model_cfg.preset == "7b" and tokenizer == "demo" and not model_cfg.init.vla:
        raise UserError("model.preset=7b needs the Llama-2 tokenizer: set data.tokenizer=<folder with Llama-2's "
                        "tokenizer.model / tokenizer.json> (local, gs:// or hub id), or start from a checkpoint with "
                        "model.init.vla=...; the demo tokenizer does not match Llama-2's 32064 token rows")


def resolve_vla_init(model_cfg: Any, tokenizer: str) -> tuple[Any, str]:
    """With ``model.init.vla``: (the checkpoint's model config, tokenizer location); else unchanged."""
    if not model_cfg.init.vla:
        return model_cfg, tokenizer
    from pipeline.model.pretrained import open_model_dir

    d = open_model_dir(model_cfg.init.vla, key="model.init.vla")
    return dataclasses.replace(d.vla_config, init=model_cfg.init), (d.url if tokenizer == "demo" else tokenizer)


def apply_init(model: Any, init: InitConfig, *, tokenizer: Any) -> Any:
    """Load the parts named by ``init`` into ``model`` (in place); returns the LoadReport, or None
    when ``init`` names nothing."""
    from pipeline.model.pretrained import LoadReport, load_model_dir_into, open_model_dir

    if not init.sources:
        return None
    report = LoadReport()
    if init.vla:
        load_model_dir_into(model, open_model_dir(init.vla, key="model.init.vla"), report, key="model.init.vla")
        return report
    for i, spec in enumerate(model.config.vision_specs):
        url = getattr(init, spec.name, "")
        if url:
            _load_vision(model, i, spec.name, url, report)
        else:
            report.random.append(f"vision.{i} ({spec.name})")
    if init.projector:
        _load_projector(model, init.projector, report)
    else:
        report.random.append("projector")
    if init.llm:
        _load_llm(model, init.llm, tokenizer, report)
    else:
        report.random.append("llm")
    return report


# -- parts ---------------------------------------------------------------------------------------------
def _read_state(url: str, key: str) -> dict[str, Any]:
    import torch
    from safetensors.torch import load

    data = fs.read_bytes(url)
    if url.endswith(".safetensors"):
        return load(data)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise UserError(f"{key}: {url} is not a readable PyTorch state dict ({type(e).__name__})") from e
    if not isinstance(state, dict):
        raise UserError(f"{key}: {url} holds a {type(state).__name__}, not a state dict")
    return state


def _timm_state(url: str, key: str) -> dict[str, Any]:
    from pipeline.model.hub import resolve_location

    loc = resolve_location(url, key=key, patterns=["*.json", *_TIMM_FILES])
    if re.search(r"\.(safetensors|bin|pth|pt)$", loc):
        return _read_state(loc, f"{key}={url}")
    for name in _TIMM_FILES:
        if fs.exists(fs.join(loc, name)):
            return _read_state(fs.join(loc, name), f"{key}={url}")
    raise UserError(f"{key}={url}: no timm weights ({' / '.join(_TIMM_FILES)}) in that folder")


def _load_vision(model: Any, i: int, name: str, url: str, report: Any) -> None:
    from pipeline.model.openvla_format import vision_drop_reason
    from pipeline.model.pretrained import DictSource, copy_strict

    key = f"model.init.{name}"
    enc = model.vision[i]
    state = _timm_state(url, key)
    adapt = getattr(sys.modules[type(enc.vit).__module__], "checkpoint_filter_fn", None)
    if adapt is not None:  # timm's own conversions: position-table resampling, open_clip / DINOv2 names
        state = adapt(state, enc.vit)
    kept = len(enc.blocks)
    targets = {f"vision.{i}.vit.{k}": v for k, v in enc.vit.state_dict().items()}

    def mapping(k: str) -> tuple[str, str]:
        reason = vision_drop_reason(k, kept)
        return ("drop", reason) if reason else ("map", f"vision.{i}.vit.{k}")

    report.sources[name] = url
    copy_strict(targets, DictSource(state), mapping, label=f"{key}={url}", report=report)


def _load_projector(model: Any, url: str, report: Any) -> None:
    from pipeline.model.hub import resolve_location
    from pipeline.model.pretrained import DictSource, copy_strict

    key = "model.init.projector"
    state = _read_state(resolve_location(url, key=key), f"{key}={url}")
    index = {"fc1": "0", "fc2": "2", "fc3": "4"}

    def mapping(k: str) -> tuple[str, str]:
        m = re.match(r"^(?:projector\.)?(fc[123]|[024])\.(weight|bias)$", k)
        return ("map", f"projector.{index.get(m.group(1), m.group(1))}.{m.group(2)}") if m else ("unexpected", "")

    targets = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    report.sources["projector"] = url
    copy_strict(targets, DictSource(state), mapping, label=f"{key}={url}", report=report)


def _load_llm(model: Any, url: str, tokenizer: Any, report: Any) -> None:
    from pipeline.model.hub import resolve_location
    from pipeline.model.openvla_format import llama_config
    from pipeline.model.pretrained import copy_strict
    from pipeline.model.safetensors_io import SafetensorsSource

    key = "model.init.llm"
    loc = resolve_location(url, key=key, patterns=["*.json", "*.safetensors"])
    cfg_url = fs.join(loc, "config.json")
    if not fs.exists(cfg_url):
        raise UserError(f"{key}={url}: no config.json; expected a Hugging Face Llama model folder")
    theirs = llama_config(fs.read_json(cfg_url), f"{key}={url}")
    ours = model.config
    for hf_name, our_name in _LLM_ARCH:
        if int(getattr(theirs, hf_name)) != int(getattr(ours, our_name)):
            raise UserError(f"{key}={url}: the LLM has {hf_name}={getattr(theirs, hf_name)} but model.{our_name}="
                            f"{getattr(ours, our_name)}; pick the matching model.preset")
    rows, base, total = int(theirs.vocab_size), int(tokenizer.vocab_size), len(tokenizer)
    if rows not in (base, total, model.vocab_size) or rows > model.vocab_size:
        raise UserError(f"{key}={url}: the LLM has {rows} token rows but data.tokenizer has {base} tokens "
                        f"(+{total - base} added); set data.tokenizer to the tokenizer that came with this LLM")
    targets = {f"llm.{k}": v for k, v in model.llm.state_dict().items()}

    def mapping(k: str) -> tuple[str, str]:
        return ("drop", "rotary frequencies (recomputed)") if k.endswith("rotary_emb.inv_freq") else ("map", f"llm.{k}")

    report.sources["llm"] = url
    with SafetensorsSource(loc) as source:
        copy_strict(targets, source, mapping, label=f"{key}={url}", report=report,
                    pad_rows=frozenset({"llm.model.embed_tokens.weight", "llm.lm_head.weight"}))
