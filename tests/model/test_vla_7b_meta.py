"""Real shapes on the meta device (nothing allocated): OpenVLA-7B and the small preset."""

from __future__ import annotations

import torch

from pipeline.model.presets import VLAConfig
from pipeline.model.vla import build_vla

# 7b total: DINOv2 ViT-L/14-reg4 (23 of 24 blocks kept) 290,630,656 + SigLIP SO400M/14 (26 of 27
# blocks, no attention-pool head) 397,200,544 + projector 71,385,600 + Llama-2-7B with 32064 rows
# 6,738,939,904. OpenVLA keeps the unused last blocks/head in its checkpoint; we prune them.
PARAMS_7B = 7_498_156_704


def test_7b_meta():
    m = build_vla(VLAConfig(preset="7b"), device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    assert m.num_params() == PARAMS_7B
    assert m.vocab_size == 32064 and m.llm.get_input_embeddings().weight.shape == (32064, 4096)
    assert m.config.vocab_size == 32001 and m.llm.config.pad_token_id == 32000
    c = m.llm.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (4096, 32, 32, 11008)
    assert [e.embed_dim for e in m.vision] == [1024, 1152]
    assert [len(e.blocks) for e in m.vision] == [23, 26]
    assert m.num_visual_tokens == 256 and m.config.image_size == 224
    proj = [mod for mod in m.projector if isinstance(mod, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in proj] == [(2176, 8704), (8704, 4096), (4096, 4096)]
    assert len(m.fsdp_units()) == 23 + 26 + 1 + 32
    # ~13 TFLOP per sample at OpenVLA's ~35 text tokens (6 N T dominates)
    assert 1.2e13 < m.flops_per_sample(35) < 1.4e13


def test_small_meta():
    m = build_vla(VLAConfig(preset="small"), device="meta")
    assert 100e6 < m.num_params() < 300e6 and m.vocab_size == 32064
