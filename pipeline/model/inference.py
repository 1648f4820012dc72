"""One-call inference from a ``vla export`` folder or an OpenVLA checkpoint: image + instruction -> 7-D action.

    policy = VLAPolicy.from_pretrained("gs://bucket/run/export", quantization="bf16")
    action = policy.predict_action(image_uint8_hwc, "pick up the block", unnorm_key="bridge_orig")
    actions = policy.predict_actions([img_a, img_b], ["open the drawer", "close it"])   # [2, 7]

Images get the training stream's pixels (:mod:`pipeline.model.image_input`: same Lanczos resize,
the size and centre crop the export was trained with). Un-normalization (shared/oxe/datasets.yaml,
``normalization.un_normalization_at_inference``): masked dims ``0.5 * (a + 1) * (q99 - q01) + q01``;
unmasked dims (gripper) are returned as decoded. Decoding is greedy over 7 tokens with a KV cache
(one prefill of BOS + visual tokens + prompt, then one token per step): by default the static-cache
decoder of :mod:`pipeline.model.decode` (all frames of a call in one batch, one CUDA graph per
action on a GPU); :func:`greedy_action_ids` is the reference (HF forward + DynamicCache).
``quantization``: see :mod:`pipeline.model.quantize`.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.model.decode import ActionDecoder, DecodeOptions
from pipeline.model.image_input import ImagePreprocess, pixels_from_uint8
from pipeline.model.pretrained import STATS_FILE, PretrainedVLA, load_pretrained_vla
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

_MAX_DECODERS = 4  # static-cache decoders kept per policy (one per batch size x prompt length)


def unnormalize_action(action: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Map a normalized action in [-1, 1] back with one dataset's ``action`` stats (BOUNDS_Q99)."""
    q01 = np.asarray(stats["q01"], dtype=np.float64)
    q99 = np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    a = np.asarray(action, dtype=np.float64)
    return np.where(mask, 0.5 * (a + 1.0) * (q99 - q01) + q01, a).astype(np.float32)


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


def _load(url: str, quantization: str, device: str | torch.device) -> tuple[PretrainedVLA, str]:
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
    """A loaded export: model, tokenizers, prompt builder, (optional) dataset statistics, the image
    preprocessing it was trained with (None: the model's image size, no crop) and how to decode."""

    model: VLA
    text_tokenizer: Any
    action_tokenizer: ActionTokenizer
    prompt_builder: ActionPromptBuilder
    norm_stats: dict[str, Any]
    quantization: str = "fp32"
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    preprocess: ImagePreprocess | None = None
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    _decoders: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.preprocess is None:
            self.preprocess = ImagePreprocess(size=int(self.model.config.image_size))

    @classmethod
    def from_pretrained(cls, url: str, *, quantization: str = "auto", device: str | torch.device = "auto",
                        decode: DecodeOptions | None = None, center_crop: bool | None = None) -> VLAPolicy:
        """Load a ``vla export`` folder or an OpenVLA checkpoint (local, gs:// or hub id): model,
        tokenizer, dataset statistics (``dataset_statistics.json`` / OpenVLA's ``norm_stats``) and the
        image preprocessing it was trained with.

        ``quantization``: "fp32" | "bf16" | "int8" | "int4" | "auto" (bf16 on a GPU, fp32 on CPU);
        int8/int4 need a CUDA GPU and bitsandbytes (UserError otherwise). ``device``: "auto" | "cpu"
        | "cuda[:N]". ``decode``: :class:`DecodeOptions` (default: static cache, CUDA graphs on a
        GPU). ``center_crop``: None = as trained (``train_config.yaml``), True/False to override."""
        loaded, mode = _load(url, quantization, device)
        model, tok = loaded.model, loaded.text_tokenizer
        at = ActionTokenizer(base_vocab_size=int(tok.vocab_size))
        dev = next(model.llm.get_input_embeddings().parameters()).device
        pre = ImagePreprocess.from_train_config(loaded.train_config, model.config, center_crop=center_crop,
                                                where=url)
        return cls(model, tok, at, ActionPromptBuilder(tok, at), loaded.norm_stats, mode, url, dev, pre,
                   decode or DecodeOptions())

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

    def frames(self, images: Sequence[Any]) -> np.ndarray:
        """The model's uint8 input frames [B, H, W, 3] (see :class:`ImagePreprocess.frames`)."""
        return self.preprocess.frames(images)

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """The float pixels [B, 3, H, W] in [0, 1] the model reads (on the policy's device)."""
        return pixels_from_uint8(torch.from_numpy(self.frames(images)).to(self.device))

    def predict_action_ids(self, images: Sequence[Any], instructions: Sequence[str], *,
                           action_dim: int = 7) -> np.ndarray:
        """int64 [B, action_dim] greedy action token ids for ``images`` and their instructions."""
        if len(images) != len(instructions):
            raise ValueError(f"predict_actions: {len(images)} images but {len(instructions)} instructions")
        prompts = [self.prompt_builder.prompt_ids(str(s)) for s in instructions]
        return self.action_ids(images, prompts, action_dim=action_dim)

    @torch.no_grad()
    def action_ids(self, images: Sequence[Any], prompts: Sequence[Sequence[int]], *, action_dim: int = 7) -> np.ndarray:
        """:meth:`predict_action_ids` for prompts given as token ids (BOS first). Static cache
        (default): all frames in one batch, prompts of any lengths; reference path: frames whose
        prompts have the same length run as one batch. Either way rows equal one-by-one calls."""
        frames = self.frames(images)
        if self.decode.static_cache:
            return self._decoder(len(prompts), max(map(len, prompts)) - 1, action_dim)(frames, prompts)
        vis_dtype = next(self.model.vision.parameters()).dtype
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        out = np.zeros((len(prompts), action_dim), dtype=np.int64)
        for idx in groups.values():
            pixels = pixels_from_uint8(torch.from_numpy(frames[idx]).to(self.device), vis_dtype)
            ids = torch.tensor([list(prompts[i]) for i in idx], device=self.device)
            out[idx] = greedy_action_ids(self.model, pixels, ids, action_dim).cpu().numpy()
        return out

    @property
    def decode_path(self) -> str:
        """How the last static-cache action ran: "cuda_graph", "eager" (or "reference")."""
        if not self.decode.static_cache:
            return "reference"
        last = next(reversed(self._decoders.values()), None)
        return "cuda_graph" if last is not None and last.graph is not None else "eager"

    def _decoder(self, batch: int, text_len: int, action_dim: int) -> ActionDecoder:
        """The static-cache decoder for this shape (kept: its cache and CUDA graph are reused)."""
        key = (batch, text_len, action_dim)
        if key in self._decoders:
            self._decoders.move_to_end(key)
        else:
            while len(self._decoders) >= _MAX_DECODERS:
                self._decoders.popitem(last=False)
            self._decoders[key] = ActionDecoder(self.model, batch=batch, text_len=text_len, action_dim=action_dim,
                                                image_size=self.preprocess.size, options=self.decode)
        return self._decoders[key]

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
