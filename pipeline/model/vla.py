"""The VLA model (Prismatic/OpenVLA architecture).

    pixel_values [B,3,H,W] in [0,1]
      -> each VisionEncoder: own normalization -> timm ViT -> patch tokens [B,P,C_i] (no CLS/registers)
      -> concat channels [B,P,sum C_i] -> projector (Linear 4x, GELU, Linear, GELU, Linear) [B,P,D]
    LLM (LlamaForCausalLM) reads [BOS, visual tokens, input_ids[1:]] (the visual tokens go right after BOS).

Loss: causal LM cross-entropy on shifted labels (visual positions are -100). By default the LM head
runs only at positions whose shifted label != -100 ("fast path": same loss, far less memory).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.presets import VisionSpec, VLAConfig
from pipeline.model.prompt import IGNORE_INDEX
from pipeline.model.tokenizer import ActionTokenizer

__all__ = ["VLA", "VLAOutput", "VisionEncoder", "action_metrics", "build_vla"]


class VLAOutput(NamedTuple):
    """Result of ``VLA.forward``.

    A NamedTuple, not a dataclass: FSDP2 finds the output tensors that need its pre-backward hook
    (which gathers the root's parameters again after reshard-after-forward) by walking the
    output, and torch 2.11's walk (pytree ``tree_flatten``) does not look inside unregistered
    dataclasses; every torch version walks NamedTuples.

    loss: scalar mean cross-entropy over supervised (label != -100) tokens, or None without labels.
    logits: fast path: [N, V] at the N supervised positions (row order = ``targets``); full path
        (``full_logits=True`` or no labels): [B, P + L, V] over the whole multimodal sequence.
    predictions: int64 [N] argmax at supervised positions (None without labels).
    targets: int64 [N] the (shifted) labels at those positions (None without labels).
    num_visual_tokens: P.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    predictions: torch.Tensor | None
    targets: torch.Tensor | None
    num_visual_tokens: int


def action_metrics(predictions: torch.Tensor, targets: torch.Tensor,
                   action_tokenizer: ActionTokenizer) -> dict[str, torch.Tensor]:
    """Action-token metrics from ``VLAOutput.predictions/targets`` (EOS and other non-action
    targets excluded). Returns 0-d float tensors: ``action_correct`` and ``action_l1_sum`` (sums,
    for all-reducing), ``num_action_tokens``, ``action_accuracy``, ``action_l1`` (means; 0 if none).
    L1 is between the decoded continuous values (bin centers) of prediction and target."""
    mask = action_tokenizer.is_action(targets)
    n = mask.sum().to(torch.float32)
    correct = ((predictions == targets) & mask).sum().to(torch.float32)
    l1 = (action_tokenizer.decode(predictions) - action_tokenizer.decode(targets)).abs()
    l1_sum = (l1 * mask).sum().to(torch.float32)
    denom = n.clamp(min=1.0)
    return {"action_correct": correct, "action_l1_sum": l1_sum, "num_action_tokens": n,
            "action_accuracy": correct / denom, "action_l1": l1_sum / denom}


class VisionEncoder(nn.Module):
    """A timm ViT returning patch features [B, P, C] of block ``spec.feature_block`` (later blocks,
    final norm and head are pruned). Applies its own mean/std to pixel_values given in [0, 1]."""

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        import timm

        self.spec = spec
        self.vit = timm.create_model(spec.timm_model, pretrained=False, **spec.timm_kwargs)
        n_blocks = len(self.vit.blocks)
        keep = spec.feature_block % n_blocks
        self.vit.prune_intermediate_layers([keep], prune_norm=True, prune_head=True)
        self.embed_dim = int(self.vit.embed_dim)
        self.num_patches = int(self.vit.patch_embed.num_patches)
        self.image_size = int(self.vit.patch_embed.img_size[0])
        self._mean = tuple(float(v) for v in spec.mean)
        self._std = tuple(float(v) for v in spec.std)
        # (device, dtype) -> (mean, std) [1,3,1,1]: made once, so a forward never copies host data
        # to the GPU (a CUDA graph capture forbids that)
        self._norm_stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.vit.blocks)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] -> [B,P,C]
        key = (pixel_values.device, pixel_values.dtype)
        if key not in self._norm_stats:
            self._norm_stats[key] = tuple(torch.tensor(v, device=key[0], dtype=key[1]).view(1, 3, 1, 1)
                                          for v in (self._mean, self._std))
        mean, std = self._norm_stats[key]
        x = (pixel_values - mean) / std
        feats = self.vit.forward_features(x)  # [B, prefix + P, C]; norm pruned -> Identity
        return feats[:, self.vit.num_prefix_tokens:]


def _projector(vision_dim: int, llm_dim: int) -> nn.Sequential:
    """Prismatic fused-GELU-MLP projector (used with two fused backbones)."""
    hidden = 4 * vision_dim
    return nn.Sequential(
        nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim), nn.GELU(),
        nn.Linear(llm_dim, llm_dim))


def _llama_config(cfg: VLAConfig, vocab_size: int, pad_token_id: int | None) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.llm_hidden_size,
        intermediate_size=cfg.llm_intermediate_size, num_hidden_layers=cfg.llm_num_layers,
        num_attention_heads=cfg.llm_num_heads, num_key_value_heads=cfg.llm_num_kv_heads,
        max_position_embeddings=cfg.llm_max_position_embeddings, rms_norm_eps=cfg.llm_rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.llm_rope_theta)},
        initializer_range=cfg.initializer_range, pad_token_id=pad_token_id, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False, use_cache=False,
        attn_implementation=cfg.attn_implementation,
    )


class VLA(nn.Module):
    """Vision encoders + projector + Llama LLM. Build with ``build_vla``.

    Attributes: ``config`` (resolved VLAConfig, vocab_size set), ``vision`` (ModuleList of
    VisionEncoder), ``projector``, ``llm`` (LlamaForCausalLM), ``vocab_size`` (padded rows).
    """

    def __init__(self, cfg: VLAConfig) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        cfg = cfg.resolved()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is not set: pass build_vla(vocab_size=len(text_tokenizer))")
        self.config = cfg
        self.vision = nn.ModuleList([VisionEncoder(s) for s in cfg.vision_specs])
        patches = {enc.num_patches for enc in self.vision}
        if len(patches) != 1:
            raise ValueError(f"model: vision encoders disagree on patch count {sorted(patches)}; "
                             "use the same image_size/patch grid")
        self.num_visual_tokens = patches.pop()
        vision_dim = sum(enc.embed_dim for enc in self.vision)
        self.projector = _projector(vision_dim, cfg.llm_hidden_size)
        self.vocab_size = cfg.padded_vocab_size()
        self.llm = LlamaForCausalLM(_llama_config(cfg, self.vocab_size, cfg.pad_token_id))
        for p in self.vision.parameters():
            p.requires_grad_(cfg.vision_trainable)

    # -- forward ------------------------------------------------------------------------------------
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> projected visual tokens [B, P, llm_hidden]."""
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):  # resize in float32 (bf16 CPU kernels vary)
            pixel_values = F.interpolate(pixel_values.float(), size=(size, size), mode="bilinear",
                                         align_corners=False, antialias=True).to(pixel_values.dtype)
        feats = torch.cat([enc(pixel_values) for enc in self.vision], dim=-1)  # [B, P, sum C]
        b, p, c = feats.shape
        # 2-D in, 2-D out: the (FSDP-wrapped) projector then returns a fresh tensor, not a view
        return self.projector(feats.reshape(b * p, c)).view(b, p, -1)

    def _multimodal_hidden(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None) -> torch.Tensor:
        tok = self.llm.get_input_embeddings()(input_ids)  # [B, L, D]
        vis = self.embed_images(pixel_values).to(tok.dtype)  # [B, P, D]
        embeds = torch.cat([tok[:, :1], vis, tok[:, 1:]], dim=1)
        if attention_mask is not None:
            am = attention_mask.to(torch.bool)
            ones = am.new_ones((am.shape[0], vis.shape[1]))
            attention_mask = torch.cat([am[:, :1], ones, am[:, 1:]], dim=1)
        out = self.llm.model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state  # [B, P + L, D]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                *, full_logits: bool = False) -> VLAOutput:
        """See ``VLAOutput``. ``input_ids[:, 0]`` must be BOS (visual tokens are inserted after it)."""
        hidden = self._multimodal_hidden(pixel_values, input_ids, attention_mask)
        p = self.num_visual_tokens
        head = self.llm.get_output_embeddings()
        if labels is None:
            return VLAOutput(None, head(hidden), None, None, p)
        ign = labels.new_full((labels.shape[0], p), IGNORE_INDEX)
        shifted = torch.cat([labels[:, :1], ign, labels[:, 1:]], dim=1)[:, 1:]  # [B, P+L-1]
        sel = shifted != IGNORE_INDEX
        targets = shifted[sel]
        if full_logits:
            all_logits = head(hidden)
            logits = all_logits[:, :-1][sel]
        else:
            logits = head(hidden[:, :-1][sel])  # [N, V]
        if targets.numel() == 0:  # nothing supervised (e.g. all truncated): zero loss, graph kept
            loss = logits.float().sum() * 0.0
        else:
            loss = F.cross_entropy(logits.float(), targets, reduction="mean")
        preds = logits.detach().argmax(dim=-1)
        return VLAOutput(loss, all_logits if full_logits else logits, preds, targets, p)

    @torch.no_grad()
    def predict_action_ids(self, pixel_values: torch.Tensor, prompt_ids: torch.Tensor,
                           action_dim: int = 7) -> torch.Tensor:
        """Greedy-decode ``action_dim`` tokens after unpadded prompts ``prompt_ids`` [B, L] (all of
        one length, e.g. ``ActionPromptBuilder.prompt_ids``). Returns int64 [B, action_dim].
        Recomputes the full sequence per token (no KV cache): fine for evaluation-sized batches."""
        ids = prompt_ids
        vis = None
        out = []
        for _ in range(action_dim):
            tok = self.llm.get_input_embeddings()(ids)
            if vis is None:
                vis = self.embed_images(pixel_values).to(tok.dtype)
            embeds = torch.cat([tok[:, :1], vis, tok[:, 1:]], dim=1)
            h = self.llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]
            nxt = self.llm.get_output_embeddings()(h).argmax(dim=-1)
            out.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
        return torch.stack(out, dim=1)

    compute_metrics = staticmethod(action_metrics)

    # -- parallelism / accounting ----------------------------------------------------------------
    def block_segments(self) -> list[list[nn.Module]]:
        """The blocks, in forward order, as runs that execute back to back: each vision
        encoder's blocks, the projector, the LLM decoder layers. Per-block wrappers (activation
        checkpointing, compile) apply to every block; FSDP units group blocks within one run."""
        segments = [list(enc.blocks) for enc in self.vision]
        segments.append([self.projector])
        segments.append(list(self.llm.model.layers))
        return segments

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules to ``fully_shard`` individually (then shard the root): every vision block,
        the projector, every LLM decoder layer. Embeddings, final norm, LM head, patch embeds
        stay with the root."""
        return [block for segment in self.block_segments() for block in segment]

    def num_params(self, *, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count (``exclude_embeddings`` drops the input embedding table)."""
        skip = {id(self.llm.get_input_embeddings().weight)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not trainable_only))

    def flops_per_sample(self, seq_len: int) -> float:
        """Training FLOPs (fwd + bwd) for one sample with ``seq_len`` text tokens (``input_ids``
        length; the P visual tokens are added here): 6 * N * tokens for every matmul weight
        (vision encoders on their patches, projector on P, LLM without the input embedding on
        P + L) plus attention scores 12 * layers * dim * tokens^2 (non-causal vision, and the
        same formula for the LLM, the usual PaLM/nanoGPT convention)."""
        p = self.num_visual_tokens
        total = 0.0
        for enc in self.vision:
            tokens = p + enc.vit.num_prefix_tokens
            n = sum(q.numel() for q in enc.parameters())
            total += 6.0 * n * tokens + 12.0 * len(enc.blocks) * enc.embed_dim * tokens ** 2
        total += 6.0 * sum(q.numel() for q in self.projector.parameters()) * p
        t = p + int(seq_len)
        n_llm = sum(q.numel() for q in self.llm.parameters()) - self.llm.get_input_embeddings().weight.numel()
        total += 6.0 * n_llm * t + 12.0 * self.config.llm_num_layers * self.config.llm_hidden_size * t ** 2
        return total


def build_vla(cfg: VLAConfig, *, vocab_size: int | None = None, pad_token_id: int | None = None,
              device: str | torch.device | None = None) -> VLA:
    """Build a randomly initialized VLA. ``vocab_size`` = ``len(text_tokenizer)`` (incl. <PAD>;
    padded to ``cfg.pad_vocab_multiple`` rows); overrides ``cfg.vocab_size``. ``device="meta"``
    builds without allocating (e.g. to count the 7b model's parameters)."""
    import dataclasses

    changes: dict[str, Any] = {}
    if vocab_size is not None:
        changes["vocab_size"] = int(vocab_size)
    if pad_token_id is not None:
        changes["pad_token_id"] = int(pad_token_id)
    cfg = dataclasses.replace(cfg, **changes).resolved()
    if device is None:
        return VLA(cfg)
    with torch.device(device):
        return VLA(cfg)
