"""OpenVLA layout facts: tensor names both ways, the config.json of the published openvla-7b (fields only,
no block of ours) derives the 7b preset, and at full 7B size (meta device) every tensor of OpenVLA's
module tree maps onto ours or is deliberately dropped, with equal shapes."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import UserError
from pipeline.model.openvla_format import (
    from_openvla_key,
    openvla_config,
    to_openvla_key,
    vla_config_from_openvla,
)
from pipeline.model.presets import VLAConfig
from pipeline.model.pretrained import plan_strict

# config.json of openvla/openvla-7b as OpenVLA's converter writes it: text_config carries only what
# differs from LlamaConfig's defaults (the rest: 4096 hidden, 32 layers, 11008 MLP, rms_norm_eps 1e-6)
OPENVLA_7B = {
    "model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"], "arch_specifier": "no-align+fused-gelu-mlp",
    "vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure", "use_fused_vision_backbone": True,
    "image_resize_strategy": "resize-naive", "image_sizes": [224, 224], "llm_max_length": 2048, "n_action_bins": 256,
    "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "timm_override_act_layers": [None, None], "hf_llm_id": "meta-llama/Llama-2-7b-hf", "pad_to_multiple_of": 64,
    "pad_token_id": 32000, "torch_dtype": "bfloat16", "output_projector_states": False,
    "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064},
    "norm_stats": {"bridge_orig": {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7}}},
}


@pytest.mark.parametrize("ours, theirs", [
    ("vision.0.vit.blocks.3.ls1.gamma", "vision_backbone.featurizer.blocks.3.ls1.scale_factor"),
    ("vision.0.vit.reg_token", "vision_backbone.featurizer.reg_token"),
    ("vision.1.vit.blocks.0.attn.qkv.weight", "vision_backbone.fused_featurizer.blocks.0.attn.qkv.weight"),
    ("projector.0.weight", "projector.fc1.weight"),
    ("projector.2.bias", "projector.fc2.bias"),
    ("projector.4.weight", "projector.fc3.weight"),
    ("llm.model.embed_tokens.weight", "language_model.model.embed_tokens.weight"),
    ("llm.lm_head.weight", "language_model.lm_head.weight"),
])
def test_names_both_ways(ours, theirs):
    assert to_openvla_key(ours) == theirs
    assert from_openvla_key(theirs, kept_blocks=[23, 26]) == ("map", ours)


@pytest.mark.parametrize("key, reason", [
    ("vision_backbone.featurizer.blocks.23.mlp.fc1.weight", "vision blocks after the feature block"),
    ("vision_backbone.featurizer.norm.weight", "vision final norm / pooling head"),
    ("vision_backbone.fused_featurizer.attn_pool.latent", "vision final norm / pooling head"),
    ("vision_backbone.fused_featurizer.blocks.26.norm1.bias", "vision blocks after the feature block"),
    ("language_model.model.layers.0.self_attn.rotary_emb.inv_freq", "rotary frequencies (recomputed)"),
])
def test_deliberately_dropped(key, reason):
    assert from_openvla_key(key, kept_blocks=[23, 26]) == ("drop", reason)


def test_unknown_names_are_unexpected():
    assert from_openvla_key("vision_backbone.third.x", [23, 26])[0] == "unexpected"
    assert from_openvla_key("projector.fc4.weight", [23, 26])[0] == "unexpected"


def test_published_config_derives_the_7b_preset():
    cfg = vla_config_from_openvla(OPENVLA_7B, tokenizer_len=32001, where="openvla-7b")
    assert cfg.preset == "7b" and cfg.image_size == 224
    assert (cfg.llm_hidden_size, cfg.llm_num_layers, cfg.llm_num_heads, cfg.llm_intermediate_size) == (4096, 32, 32, 11008)
    assert cfg.padded_vocab_size() == 32064 and cfg.pad_token_id == 32000
    assert cfg.llm_rms_norm_eps == 1e-6 and cfg.llm_max_position_embeddings == 2048  # as HF builds OpenVLA's LLM
    with pytest.raises(UserError, match=r"32100 tokens \(padded to 32128 rows\) but text_config.vocab_size=32064"):
        vla_config_from_openvla(OPENVLA_7B, tokenizer_len=32100, where="x")
    with pytest.raises(UserError, match=r"vision_backbone_id='siglip-vit-so400m'"):
        vla_config_from_openvla(dict(OPENVLA_7B, vision_backbone_id="siglip-vit-so400m"), tokenizer_len=32001, where="x")


def test_exported_config_reads_back_and_names_openvla_fields():
    cfg = vla_config_from_openvla(OPENVLA_7B, tokenizer_len=32001, where="x")
    meta = openvla_config(cfg, base_vocab=32000, norm_stats=OPENVLA_7B["norm_stats"], dtype="bfloat16")
    for key in ("vision_backbone_id", "llm_backbone_id", "use_fused_vision_backbone", "image_sizes", "timm_model_ids",
                "pad_to_multiple_of", "pad_token_id", "n_action_bins", "norm_stats"):
        assert meta[key] == OPENVLA_7B[key], key
    assert meta["text_config"]["vocab_size"] == 32064 and meta["vla_pipeline"]["loads_in_openvla_code"]
    assert vla_config_from_openvla(meta, tokenizer_len=32001, where="x") == cfg


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_openvla_7b_tree_maps_onto_ours_on_meta():
    """OpenVLA's module tree at full size, built from timm + transformers as its modeling code does."""
    import re

    import timm
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.model.vla import build_vla

    cfg = vla_config_from_openvla(OPENVLA_7B, tokenizer_len=32001, where="openvla-7b")
    with torch.device("meta"):
        dino = timm.create_model("vit_large_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=224)
        siglip = timm.create_model("vit_so400m_patch14_siglip_224", pretrained=False, num_classes=0, img_size=224)
        llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in OPENVLA_7B["text_config"].items() if k != "model_type"}))
        ours = build_vla(cfg, device="meta")
    theirs = {**_shapes(dino, "vision_backbone.featurizer."), **_shapes(siglip, "vision_backbone.fused_featurizer."),
              **_shapes(llm, "language_model."),
              "projector.fc1.weight": (8704, 2176), "projector.fc1.bias": (8704,), "projector.fc2.weight": (4096, 8704),
              "projector.fc2.bias": (4096,), "projector.fc3.weight": (4096, 4096), "projector.fc3.bias": (4096,)}
    theirs = {re.sub(r"\.ls([12])\.gamma$", r".ls\1.scale_factor", k): v for k, v in theirs.items()}
    kept = [len(e.blocks) for e in ours.vision]
    assert kept == [23, 26]
    plan, dropped = plan_strict(_shapes(ours, ""), theirs, lambda k: from_openvla_key(k, kept), label="openvla-7b")
    per_block = [len([k for k in theirs if k.startswith(p + "blocks.0.")])
                 for p in ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")]
    assert dropped == {"vision blocks after the feature block": sum(per_block),
                       "vision final norm / pooling head": 2 + 2 + len([k for k in theirs if ".attn_pool." in k])}
    assert len(plan) == len(ours.state_dict()) and len(plan) + sum(dropped.values()) == len(theirs)
    assert sum(torch.Size(theirs[k]).numel() for k in plan) == ours.num_params()


def test_small_preset_has_no_openvla_code_path():
    cfg = VLAConfig(preset="tiny", vocab_size=769).resolved()
    meta = openvla_config(cfg, base_vocab=768, norm_stats={}, dtype="float32")
    assert meta["vla_pipeline"]["loads_in_openvla_code"] is False
    assert meta["timm_model_ids"] == [s.timm_model for s in cfg.vision_specs]
