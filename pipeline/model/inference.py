"""One-call inference from a ``vla export`` folder or an OpenVLA checkpoint: image + instruction -> 7-D action.

    policy = VLAPolicy.from_pretrained("gs://bucket/run/export", quantization="bf16")
    action = policy.predict_action(image_uint8_hwc, "pick up the block", unnorm_key="bridge_orig")
    actions = policy.predict_actions([img_a, img_b], ["open the drawer", "close it"])   # [2, 7]

Un-normalization (shared/oxe/datasets.yaml, ``normalization.un_normalization_at_inference``):
masked dims ``0.5 * (a + 1) * (q99 - q01) + q01``; unmasked dims (gripper) are returned as decoded.
Decoding is greedy over 7 tokens with a KV cache (one prefill of BOS + visual tokens + prompt,
then one token per step). ``quantization``: see :mod:`pipeline.model.quantize`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.model.pretrained import STATS_FILE, load_pretrained_vla
from pipeline.model.prompt import ActionPromptBuilder
from pipeline.model.quantize import (
    GPU_MODES,
    check_mode,
    compute_dtype,
    quantize_llm_linears_,
    resolve_device,
)
from pipeline.model.tokenizer import ActionTokenizer
from pipeline.model.vla import VLA

__all__ = ["VLAPolicy", "greedy_action_ids", "load_policy", "load_vla", "unnormalize_action"]

TRAIN_IMAGE_SIZE = 224  # the stream's pixel_values size (contract: "Training batch")


def unnormalize_action(action: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Map a normalized action in [-1, 1] back with one dataset's ``action`` stats (BOUNDS_Q99)."""
    q01 = np.asarray(stats["q01"], dtype=np.float64)
    q99 = np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    a = np.asarray(action, dtype=np.float64)
    return np.where(mask, 0.5 * (a + 1.0) * (q99 - q01) + q01, a).astype(np.float32)


def _to_pixel_values(image: Any) -> torch.Tensor:
    """uint8 HWC (numpy / PIL RGB) or float CHW in [0,1] -> float32 [1, 3, 224, 224] in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image
        image = np.array(image.convert("RGB"))  # a writable copy
    x = torch.as_tensor(np.asarray(image))
    if x.dtype == torch.uint8:
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"image shape {tuple(x.shape)}: expected uint8 [H,W,3] (RGB)")
        x = x.permute(2, 0, 1)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image shape {tuple(x.shape)}: expected uint8 [H,W,3] or float [3,H,W]")
    x = x[None]
    if x.shape[-2:] != (TRAIN_IMAGE_SIZE, TRAIN_IMAGE_SIZE):
        x = F.interpolate(x, size=(TRAIN_IMAGE_SIZE, TRAIN_IMAGE_SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def _cache_arg(llm_model: Any) -> str:
    """The KV-cache keyword of the HF decoder: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    params = inspect.signature(type(llm_model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def greedy_action_ids(model: VLA, pixel_values: torch.Tensor, prompt_ids: torch.Tensor,
                      action_dim: int = 7) -> torch.Tensor:
    """Greedy ``action_dim`` tokens after unpadded prompts ``prompt_ids`` [B, L] (one length) with a
    KV cache: same ids as ``VLA.predict_action_ids``, one prefill + ``action_dim - 1`` 1-token steps."""
    llm = model.llm
    head = llm.get_output_embeddings()
    tok = llm.get_input_embeddings()(prompt_ids)
    vis = model.embed_images(pixel_values).to(tok.dtype)
    embeds = torch.cat([tok[:, :1], vis, tok[:, 1:]], dim=1)
    out = llm.model(inputs_embeds=embeds, use_cache=True)
    nxt = head(out.last_hidden_state[:, -1]).argmax(dim=-1)
    ids = [nxt]
    arg = _cache_arg(llm.model)
    for _ in range(action_dim - 1):
        cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        out = llm.model(input_ids=nxt[:, None], use_cache=True, **{arg: cache})
        nxt = head(out.last_hidden_state[:, -1]).argmax(dim=-1)
        ids.append(nxt)
    return torch.stack(ids, dim=1)


def _load(url: str, quantization: str, device: str | torch.device) -> tuple[Any, str]:
    """The checkpoint (ours or OpenVLA's, via :func:`pipeline.model.pretrained.load_pretrained_vla`)
    in inference form: bf16/fp32 built directly on ``device`` in their dtype; int8/int4 built in
    bf16 on the CPU, their LLM decoder Linear layers quantized onto the GPU one by one, then the
    rest moved over (peak GPU ~ final size). Returns (PretrainedVLA, mode)."""
    dev = resolve_device(device)
    mode = check_mode(quantization, dev)
    build_on = torch.device("cpu") if mode in GPU_MODES else dev
    loaded = load_pretrained_vla(url, dtype=compute_dtype(mode), device=build_on)
    model = loaded.model.eval().requires_grad_(False)
    if mode in GPU_MODES:
        quantize_llm_linears_(model, mode, dev)
        model = model.to(dev)
    loaded.model = model
    return loaded, mode


def load_vla(url: str, *, quantization: str = "auto", device: str | torch.device = "auto") -> tuple[VLA, str]:
    """The checkpoint's model in inference form: ``(model, mode)`` (see :func:`_load`)."""
    loaded, mode = _load(url, quantization, device)
    return loaded.model, mode


@dataclass
class VLAPolicy:
    """A loaded export: model, tokenizers, prompt builder and (optional) dataset statistics."""

    model: VLA
    text_tokenizer: Any
    action_tokenizer: ActionTokenizer
    prompt_builder: ActionPromptBuilder
    norm_stats: dict[str, Any]
    quantization: str = "fp32"
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_pretrained(cls, url: str, *, quantization: str = "auto",
                        device: str | torch.device = "auto") -> VLAPolicy:
        """Load a ``vla export`` folder or an OpenVLA checkpoint (local, gs:// or hub id): model,
        tokenizer and dataset statistics (``dataset_statistics.json`` / OpenVLA's ``norm_stats``).

        ``quantization``: "fp32" | "bf16" | "int8" | "int4" | "auto" (bf16 on a GPU, fp32 on CPU);
        int8/int4 need a CUDA GPU and bitsandbytes (UserError otherwise). ``device``: "auto" | "cpu"
        | "cuda[:N]"."""
        loaded, mode = _load(url, quantization, device)
        tok = loaded.text_tokenizer
        at = ActionTokenizer(base_vocab_size=int(tok.vocab_size))
        dev = next(loaded.model.llm.get_input_embeddings().parameters()).device
        return cls(loaded.model, tok, at, ActionPromptBuilder(tok, at), loaded.norm_stats, mode, url, dev)

    @property
    def unnorm_keys(self) -> list[str]:
        """Datasets whose statistics the export carries (valid ``unnorm_key`` values)."""
        return sorted(self.norm_stats)

    def resolve_unnorm_key(self, unnorm_key: str | None) -> str | None:
        """``unnorm_key`` checked against the statistics; None -> the only dataset (None when the
        export has no statistics: actions stay normalized). UserError listing the valid keys."""
        if unnorm_key is None:
            if len(self.norm_stats) <= 1:
                return next(iter(self.norm_stats), None)
            raise UserError(f"unnorm_key: this model was trained on {len(self.norm_stats)} datasets; "
                            f"pass one of {self.unnorm_keys}")
        if unnorm_key not in self.norm_stats:
            raise UserError(f"unnorm_key={unnorm_key!r}: not in {STATS_FILE}; expected one of {self.unnorm_keys}")
        return unnorm_key

    @torch.no_grad()
    def predict_action_ids(self, images: Sequence[Any], instructions: Sequence[str], *,
                           action_dim: int = 7) -> np.ndarray:
        """int64 [B, action_dim] greedy action token ids. Frames whose prompts have the same token
        length run as one batch (no padding, so results equal one-by-one calls)."""
        if len(images) != len(instructions):
            raise ValueError(f"predict_actions: {len(images)} images but {len(instructions)} instructions")
        vis_dtype = next(self.model.vision.parameters()).dtype
        prompts = [self.prompt_builder.prompt_ids(str(s)) for s in instructions]
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        out = np.zeros((len(prompts), action_dim), dtype=np.int64)
        for idx in groups.values():
            pixels = torch.cat([_to_pixel_values(images[i]) for i in idx]).to(self.device, vis_dtype)
            ids = torch.tensor([prompts[i] for i in idx], device=self.device)
            out[idx] = greedy_action_ids(self.model, pixels, ids, action_dim).cpu().numpy()
        return out

    def predict_actions(self, images: Sequence[Any], instructions: Sequence[str] | str, *,
                        unnorm_key: str | None = None, action_dim: int = 7) -> np.ndarray:
        """Batched :meth:`predict_action`: float32 [B, action_dim]; ``instructions`` may be one
        string for all images."""
        if isinstance(instructions, str):
            instructions = [instructions] * len(images)
        key = self.resolve_unnorm_key(unnorm_key)
        actions = self.action_tokenizer.decode(self.predict_action_ids(images, instructions, action_dim=action_dim))
        if key is None:
            return actions.astype(np.float32)
        return unnormalize_action(actions, self.norm_stats[key]["action"])

    def predict_action(self, image: Any, instruction: str, *, unnorm_key: str | None = None,
                       action_dim: int = 7) -> np.ndarray:
        """Greedy action for one frame: float32 [action_dim], un-normalized with the statistics of
        dataset ``unnorm_key`` (None: the only dataset; normalized when the export has no stats)."""
        return self.predict_actions([image], [instruction], unnorm_key=unnorm_key, action_dim=action_dim)[0]


def load_policy(url: str, *, device: str | torch.device = "cpu", quantization: str = "fp32") -> VLAPolicy:
    """Backward-compatible loader: ``VLAPolicy.from_pretrained`` (fp32 on the CPU by default)."""
    return VLAPolicy.from_pretrained(url, quantization=quantization, device=device)
