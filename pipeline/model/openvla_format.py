"""The OpenVLA / Prismatic Hugging Face checkpoint layout: tensor names and ``config.json``, both ways.

Facts (OpenVLA's ``prismatic/extern/hf/modeling_prismatic.py`` and ``configuration_prismatic.py``):

| OpenVLA tensor                              | ours                         | notes                          |
|---------------------------------------------|------------------------------|--------------------------------|
| ``vision_backbone.featurizer.<timm key>``   | ``vision.0.vit.<timm key>``  | DINOv2 ViT-L/14-reg4 (timm)    |
| ``vision_backbone.fused_featurizer.<key>``  | ``vision.1.vit.<key>``       | SigLIP so400m/14 (timm)        |
| ``...ls1.scale_factor`` / ``ls2.scale_factor`` | ``...ls1.gamma`` / ``ls2.gamma`` | HF renames timm's LayerScale |
| ``projector.fc1/fc2/fc3.{weight,bias}``     | ``projector.0/2/4.*``        | Linear 4x, GELU, Linear, GELU, Linear |
| ``language_model.<key>``                    | ``llm.<key>``                | LlamaForCausalLM               |

Both towers are whole timm models in the checkpoint, but features come from the second-to-last
block (``get_intermediate_layers(n={depth - 2})``, no final norm, patch tokens only): the blocks
after the feature block, the final ``norm`` and SigLIP's ``attn_pool`` head are never used. Import
lists them as deliberately dropped; export does not write them (OpenVLA's loader then reports them
as newly initialized, and never runs them).

``config.json``: ``OpenVLAConfig`` fields (``vision_backbone_id``, ``llm_backbone_id``,
``use_fused_vision_backbone``, ``image_sizes``, ``timm_model_ids``, ``pad_token_id``,
``pad_to_multiple_of``, ``n_action_bins``, ``norm_stats``, ``text_config`` (a Llama config; fields it
leaves out take ``LlamaConfig`` defaults, e.g. ``rms_norm_eps=1e-6``)). Action tokens are decoded
against ``text_config.vocab_size - pad_to_multiple_of`` (32064 - 64 = 32000 for Llama-2).
Our exports add a ``vla_pipeline`` block with the exact ``VLAConfig`` (other readers ignore it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pipeline.errors import UserError
from pipeline.model.presets import VLAConfig

__all__ = [
    "OPENVLA_VISION_ID",
    "from_openvla_key",
    "is_openvla_config",
    "llama_config",
    "openvla_config",
    "preprocessor_config",
    "to_openvla_key",
    "vision_drop_reason",
    "vla_config_from_openvla",
]

OPENVLA_VISION_ID = "dinosiglip-vit-so-224px"
OPENVLA_TIMM_IDS = ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224")
_CODE_REPO = "openvla/openvla-7b"  # auto_map points at the published model code (repo--module.Class)
_VISION_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")
_PROJECTOR = {"0": "fc1", "2": "fc2", "4": "fc3"}
_HEADS = ("norm", "fc_norm", "attn_pool", "head", "head_drop")


def is_openvla_config(meta: dict[str, Any]) -> bool:
    """True for an OpenVLA / Prismatic ``config.json``."""
    return meta.get("model_type") in ("openvla", "prismatic") or "vision_backbone_id" in meta


# -- tensor names ------------------------------------------------------------------------------------
def to_openvla_key(key: str) -> str:
    """Our state-dict key -> OpenVLA's."""
    m = re.match(r"^vision\.(\d)\.vit\.(.*)$", key)
    if m:
        rest = re.sub(r"\.ls([12])\.gamma$", r".ls\1.scale_factor", m.group(2))
        return _VISION_PREFIXES[int(m.group(1))] + rest
    m = re.match(r"^projector\.(\d)\.(weight|bias)$", key)
    if m and m.group(1) in _PROJECTOR:
        return f"projector.{_PROJECTOR[m.group(1)]}.{m.group(2)}"
    if key.startswith("llm."):
        return "language_model." + key[len("llm."):]
    raise ValueError(f"to_openvla_key: {key} has no OpenVLA name")


def vision_drop_reason(timm_key: str, kept_blocks: int) -> str | None:
    """Why a vision-tower tensor (timm name) is unused by an encoder that keeps ``kept_blocks``
    blocks, or None when the encoder uses it."""
    m = re.match(r"^blocks\.(\d+)\.", timm_key)
    if m and int(m.group(1)) >= kept_blocks:
        return "vision blocks after the feature block"
    if timm_key.split(".", 1)[0] in _HEADS:
        return "vision final norm / pooling head"
    return None


def from_openvla_key(key: str, kept_blocks: Sequence[int]) -> tuple[str, str]:
    """OpenVLA key -> ``("map", our key)``, ``("drop", reason)`` or ``("unexpected", "")``.
    ``kept_blocks[i]``: blocks encoder ``i`` keeps (feature block index + 1)."""
    for i, prefix in enumerate(_VISION_PREFIXES):
        if key.startswith(prefix) and i < len(kept_blocks):
            rest = key[len(prefix):]
            reason = vision_drop_reason(rest, kept_blocks[i])
            if reason:
                return "drop", reason
            return "map", f"vision.{i}.vit." + re.sub(r"\.ls([12])\.scale_factor$", r".ls\1.gamma", rest)
    m = re.match(r"^projector\.(fc[123])\.(weight|bias)$", key)
    if m:
        inverse = {v: k for k, v in _PROJECTOR.items()}
        return "map", f"projector.{inverse[m.group(1)]}.{m.group(2)}"
    if key.startswith("language_model."):
        if key.endswith("rotary_emb.inv_freq"):
            return "drop", "rotary frequencies (recomputed)"
        return "map", "llm." + key[len("language_model."):]
    return "unexpected", ""


# -- config.json -------------------------------------------------------------------------------------
def llama_config(text_config: dict[str, Any], where: str) -> Any:
    """A ``transformers.LlamaConfig`` from a config dict; fields it leaves out take HF's defaults."""
    from transformers import LlamaConfig

    if text_config.get("model_type", "llama") != "llama":
        raise UserError(f"{where}: text_config.model_type={text_config.get('model_type')!r}; "
                        "only Llama language models are supported")
    return LlamaConfig(**{k: v for k, v in text_config.items() if k != "model_type"})


def vla_config_from_openvla(meta: dict[str, Any], *, tokenizer_len: int, where: str) -> VLAConfig:
    """Our ``VLAConfig`` for an OpenVLA ``config.json`` (``where`` names it in errors).

    Exports of this project carry the exact config (``vla_pipeline.vla_config``); other checkpoints
    must be OpenVLA's architecture (``dinosiglip-vit-so-224px`` + a Llama): the ``7b`` preset's
    vision towers, LLM shapes from ``text_config``. ``tokenizer_len``: ``len(tokenizer)`` of the
    checkpoint's tokenizer; padded to ``pad_to_multiple_of`` it must equal the LLM's token rows."""
    rows = int(llama_config(meta.get("text_config") or {}, where).vocab_size)
    multiple = int(meta.get("pad_to_multiple_of", 64))
    block = meta.get("vla_pipeline")
    if isinstance(block, dict) and isinstance(block.get("vla_config"), dict):
        cfg = VLAConfig.from_dict({k: v for k, v in block["vla_config"].items() if k != "init"})
    else:
        cfg = _derive(meta, where, tokenizer_len)
    padded = cfg.padded_vocab_size(tokenizer_len)
    if padded != rows:
        raise UserError(f"{where}: the tokenizer has {tokenizer_len} tokens (padded to {padded} rows) but "
                        f"text_config.vocab_size={rows}; use the tokenizer saved with this checkpoint")
    if cfg.pad_vocab_multiple != multiple:
        raise UserError(f"{where}: pad_to_multiple_of={multiple} but the saved model config pads to "
                        f"{cfg.pad_vocab_multiple}")
    return cfg


def _derive(meta: dict[str, Any], where: str, tokenizer_len: int) -> VLAConfig:
    vision = meta.get("vision_backbone_id")
    if vision != OPENVLA_VISION_ID or meta.get("use_fused_vision_backbone") is False:
        raise UserError(f"{where}: vision_backbone_id={vision!r}; this importer reads OpenVLA's "
                        f"{OPENVLA_VISION_ID!r} (fused DINOv2 + SigLIP at 224 px)")
    sizes = list(meta.get("image_sizes") or [224, 224])
    if sizes != [224, 224]:
        raise UserError(f"{where}: image_sizes={sizes}; OpenVLA's {OPENVLA_VISION_ID} uses [224, 224]")
    tc = llama_config(meta.get("text_config") or {}, where)
    return VLAConfig(
        preset="7b", image_size=224, llm_hidden_size=int(tc.hidden_size), llm_num_layers=int(tc.num_hidden_layers),
        llm_num_heads=int(tc.num_attention_heads),
        llm_num_kv_heads=int(tc.num_key_value_heads or tc.num_attention_heads),
        llm_intermediate_size=int(tc.intermediate_size), llm_max_position_embeddings=int(tc.max_position_embeddings),
        llm_rope_theta=float(tc.rope_parameters["rope_theta"]), llm_rms_norm_eps=float(tc.rms_norm_eps),
        vocab_size=int(tokenizer_len), pad_vocab_multiple=int(meta.get("pad_to_multiple_of", 64)),
        pad_token_id=int(meta.get("pad_token_id", 32000))).resolved()


def _text_config(cfg: VLAConfig, rows: int) -> dict[str, Any]:
    return {"model_type": "llama", "vocab_size": rows, "hidden_size": cfg.llm_hidden_size,
            "intermediate_size": cfg.llm_intermediate_size, "num_hidden_layers": cfg.llm_num_layers,
            "num_attention_heads": cfg.llm_num_heads, "num_key_value_heads": cfg.llm_num_kv_heads,
            "max_position_embeddings": cfg.llm_max_position_embeddings, "rms_norm_eps": cfg.llm_rms_norm_eps,
            "rope_theta": cfg.llm_rope_theta, "hidden_act": "silu", "tie_word_embeddings": False,
            "pad_token_id": cfg.pad_token_id, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}


def openvla_config(cfg: VLAConfig, *, base_vocab: int, norm_stats: dict[str, Any], dtype: str) -> dict[str, Any]:
    """``config.json`` of an OpenVLA-layout export of a model with config ``cfg``.

    UserError when OpenVLA's decoder would read the wrong action ids (``rows - pad_to_multiple_of``
    must be the tokenizer's base vocabulary ``base_vocab``)."""
    cfg = cfg.resolved()
    rows = cfg.padded_vocab_size()
    if rows - cfg.pad_vocab_multiple != base_vocab:
        raise UserError(f"format=openvla: OpenVLA decodes actions against {rows} - {cfg.pad_vocab_multiple} = "
                        f"{rows - cfg.pad_vocab_multiple} tokens but this tokenizer has {base_vocab}; "
                        "export format=vla instead")
    is_7b = cfg.preset == "7b" and cfg.image_size == 224 and cfg.vision_depth is None
    timm_ids = list(OPENVLA_TIMM_IDS) if is_7b else [s.timm_model for s in cfg.vision_specs]
    arch = {k: v for k, v in cfg.to_dict().items() if k != "init"}
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": f"{_CODE_REPO}--configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": f"{_CODE_REPO}--modeling_prismatic.OpenVLAForActionPrediction"},
        "model_type": "openvla",
        "vision_backbone_id": OPENVLA_VISION_ID,
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive",
        "image_sizes": [cfg.image_size, cfg.image_size],
        "timm_model_ids": timm_ids,
        "timm_override_act_layers": [None, None],
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "llm_max_length": 2048,
        "pad_token_id": cfg.pad_token_id,
        "pad_to_multiple_of": cfg.pad_vocab_multiple,
        "output_projector_states": False,
        "n_action_bins": 256,
        "norm_stats": norm_stats,
        "text_config": _text_config(cfg, rows),
        "torch_dtype": dtype,
        "vla_pipeline": {"format_version": 1, "vla_config": arch, "loads_in_openvla_code": is_7b},
    }


def preprocessor_config(cfg: VLAConfig) -> dict[str, Any]:
    """``preprocessor_config.json`` (``PrismaticImageProcessor`` arguments): resize both views to the
    model size (bicubic), then each tower's own mean/std."""
    cfg = cfg.resolved()
    size = [3, cfg.image_size, cfg.image_size]
    specs = cfg.vision_specs
    return {
        "auto_map": {"AutoImageProcessor": f"{_CODE_REPO}--processing_prismatic.PrismaticImageProcessor",
                     "AutoProcessor": f"{_CODE_REPO}--processing_prismatic.PrismaticProcessor"},
        "image_processor_type": "PrismaticImageProcessor",
        "processor_class": "PrismaticProcessor",
        "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive",
        "input_sizes": [size, size],
        "interpolations": ["bicubic", "bicubic"],
        "means": [list(s.mean) for s in specs],
        "stds": [list(s.std) for s in specs],
    }
