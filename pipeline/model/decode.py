"""Fast greedy action decoding for a :class:`~pipeline.model.vla.VLA`: a static KV cache, one batch
for prompts of any lengths, no host sync until the ids are read, and on CUDA the whole action
(uint8 frames -> pixels, vision towers, prefill, every decode step) replayed as one CUDA graph.

    runner = ActionDecoder(model, batch=2, text_len=23, action_dim=7, options=DecodeOptions())
    ids = runner(frames_uint8_bhwc, [prompt_a, prompt_b])   # int64 [2, 7], same ids as greedy_action_ids

Sequence layout of row b (``text_len`` = the longest prompt without its BOS; ``pad_b`` = how much
shorter row b's prompt is): ``[BOS, P visual tokens, pad_b masked slots, prompt text, actions]``.
Every row's text ends at the same slot, so all rows decode at the same static slots; the masked
slots are never attended to and positions skip them, so each row computes what it computes alone.

The decoder layers are run here from the HF Llama modules' own submodules (norms, projections,
MLP, rotary embedding): the same math as the HF forward that :func:`greedy_action_ids` runs (the
reference path), with the KV cache written into preallocated buffers at static slots. An instance
is specialized to (batch, text_len, action_dim) so every shape and slot is a Python constant: that
is what makes one CUDA graph of the whole action possible. LLM.int8() layers (bitsandbytes, with
outlier columns found on the host) cannot be captured: int8 runs the same code eagerly.

Options (:class:`DecodeOptions`): ``cuda_graph`` (CUDA only; the CPU path stays eager), ``compile``
(``torch.compile`` of the per-layer blocks, reused by every layer), ``sdpa_backend``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.image_input import pixels_from_uint8

__all__ = ["SDPA_BACKENDS", "ActionDecoder", "DecodeOptions"]

log = logging.getLogger("pipeline.model.decode")

SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """How ``VLAPolicy`` decodes. ``static_cache=False``: the reference HF loop (DynamicCache, prompts
    grouped by length). ``cuda_graph``: replay each (batch, prompt length) as one CUDA graph (CUDA
    only; int8 and capture failures fall back to eager). ``compile``: ``torch.compile`` the
    per-layer blocks (``compile_backend``: inductor, or eager/aot_eager to check tracing on CPU).
    ``sdpa_backend``: auto | flash | efficient | cudnn | math (auto: torch picks per call)."""

    static_cache: bool = True
    cuda_graph: bool = True
    compile: bool = False
    compile_backend: str = "inductor"
    sdpa_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend={self.sdpa_backend!r}: expected one of {', '.join(SDPA_BACKENDS)}")


def _sdpa_context(backend: str) -> Any:
    import contextlib

    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "math": "MATH"}
    return sdpa_kernel([getattr(SDPBackend, names[backend])])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _pre_attention(layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int,
                   n_kv: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input norm, q/k/v projections and RoPE of one decoder layer: [B,T,D] -> q [B,H,T,hd], k, v."""
    b, t, _ = x.shape
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, t, n_heads, head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, n_kv, head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, n_kv, head_dim).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def _post_attention(layer: Any, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Output projection + residual, then the MLP block + residual: attn_out [B,H,T,hd] -> [B,T,D]."""
    b, _, t, _ = attn_out.shape
    x = x + layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(b, t, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _graphable(model: Any) -> bool:
    """False when a layer cannot be captured in a CUDA graph (bitsandbytes LLM.int8())."""
    return not any(type(m).__name__ in ("Linear8bitLt", "Int8Linear") for m in model.llm.modules())


class ActionDecoder:
    """Greedy decoding of ``action_dim`` tokens for ``batch`` frames whose prompts (BOS included)
    are at most ``text_len + 1`` tokens long. Call it with uint8 frames [batch, H, W, 3] (H = W =
    the preprocessing size) and the prompts; returns int64 [batch, action_dim] on the CPU."""

    def __init__(self, model: Any, *, batch: int, text_len: int, action_dim: int, image_size: int,
                 options: DecodeOptions) -> None:
        llm = model.llm
        emb = llm.get_input_embeddings()
        self.model, self.options = model, options
        self.batch, self.text_len, self.action_dim = int(batch), int(text_len), int(action_dim)
        cfg = llm.config
        self.n_heads, self.n_kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.scale = float(llm.model.layers[0].self_attn.scaling)
        self.num_visual = int(model.num_visual_tokens)
        self.prefill_len = 1 + self.num_visual + self.text_len
        max_len = self.prefill_len + self.action_dim - 1
        dev, dtype = emb.weight.device, emb.weight.dtype
        self.device, self.vis_dtype = dev, next(model.vision.parameters()).dtype
        n_layers = len(llm.model.layers)
        shape = (n_layers, self.batch, self.n_kv, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=dev)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=dev)
        # static inputs / output (a CUDA graph reads and writes these addresses)
        self.frames = torch.zeros((self.batch, image_size, image_size, 3), dtype=torch.uint8, device=dev)
        self.ids = torch.zeros((self.batch, 1 + self.text_len), dtype=torch.long, device=dev)
        self.pad = torch.zeros((self.batch,), dtype=torch.long, device=dev)
        self.out = torch.zeros((self.batch, self.action_dim), dtype=torch.long, device=dev)
        self.pre: Callable = _pre_attention
        self.post: Callable = _post_attention
        if options.compile:
            self.pre = torch.compile(_pre_attention, backend=options.compile_backend, dynamic=False)
            self.post = torch.compile(_post_attention, backend=options.compile_backend, dynamic=False)
        self.graph: Any = None
        self.use_graph = options.cuda_graph and dev.type == "cuda" and _graphable(model)

    # -- inputs -------------------------------------------------------------------------------------
    def _load(self, frames: np.ndarray, prompts: Sequence[Sequence[int]]) -> None:
        if frames.shape != tuple(self.frames.shape):
            raise ValueError(f"frames {frames.shape}: this decoder takes {tuple(self.frames.shape)}")
        ids = np.zeros((self.batch, 1 + self.text_len), dtype=np.int64)
        pad = np.zeros((self.batch,), dtype=np.int64)
        for b, p in enumerate(prompts):
            n = len(p) - 1  # text after BOS, right-aligned
            if not 0 <= n <= self.text_len:
                raise ValueError(f"prompt of {len(p)} tokens: this decoder takes at most {self.text_len + 1}")
            ids[b, 0], pad[b] = p[0], self.text_len - n
            ids[b, 1 + pad[b]:] = p[1:]
        self.frames.copy_(torch.from_numpy(frames), non_blocking=True)
        self.ids.copy_(torch.from_numpy(ids), non_blocking=True)
        self.pad.copy_(torch.from_numpy(pad), non_blocking=True)

    def __call__(self, frames: np.ndarray, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        if len(prompts) != self.batch:
            raise ValueError(f"{len(prompts)} prompts: this decoder takes {self.batch}")
        self._load(frames, prompts)
        with torch.no_grad(), _sdpa_context(self.options.sdpa_backend):
            if self.use_graph and self.graph is None:
                self._capture()
            if self.graph is not None:
                self.graph.replay()
            else:
                self._run()
        return self.out.to("cpu", copy=True).numpy()  # the one host sync; a copy: ``out`` is reused

    # -- the action ---------------------------------------------------------------------------------
    def _positions_and_masks(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Prefill positions [B, T]; prefill mask [B,1,T,T] and key-validity [B, max_len] (None when
        no row can be padded: batch 1)."""
        t, p = self.prefill_len, self.num_visual
        slots = torch.arange(t, device=self.device)
        text = slots > p  # slots of the (padded) prompt text
        pos = (slots[None, :] - text[None, :] * self.pad[:, None]).clamp(min=0)
        if self.batch == 1:
            return pos, None, None
        max_len = self.k_cache.shape[3]
        keys = torch.arange(max_len, device=self.device)
        valid = ~((keys[None, :] > p) & (keys[None, :] <= p + self.pad[:, None]))  # [B, max_len]
        causal = slots[None, :] <= slots[:, None]  # [T, T]
        prefill_mask = (causal[None] & valid[:, None, :t])[:, None]
        return pos, prefill_mask, valid

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                causal: bool) -> torch.Tensor:
        if self.n_kv != self.n_heads:  # grouped-query attention: repeat the KV heads (as HF does)
            rep = self.n_heads // self.n_kv
            k = k[:, :, None].expand(-1, -1, rep, -1, -1).reshape(k.shape[0], self.n_heads, *k.shape[2:])
            v = v[:, :, None].expand(-1, -1, rep, -1, -1).reshape(v.shape[0], self.n_heads, *v.shape[2:])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                              scale=self.scale)

    def _layers(self, x: torch.Tensor, pos: torch.Tensor, slot: int | None, mask: torch.Tensor | None) -> torch.Tensor:
        """Every decoder layer over ``x`` [B, T, D]: prefill (``slot`` None, T = prefill_len) or one
        decode step at cache slot ``slot`` (T = 1)."""
        llm = self.model.llm.model
        cos, sin = llm.rotary_emb(x, pos)
        for i, layer in enumerate(llm.layers):
            q, k, v = self.pre(layer, x, cos, sin, self.n_heads, self.n_kv, self.head_dim)
            if slot is None:
                self.k_cache[i, :, :, : k.shape[2]] = k
                self.v_cache[i, :, :, : v.shape[2]] = v
                keys, values = k, v
            else:
                self.k_cache[i, :, :, slot: slot + 1] = k
                self.v_cache[i, :, :, slot: slot + 1] = v
                keys, values = self.k_cache[i, :, :, : slot + 1], self.v_cache[i, :, :, : slot + 1]
            x = self.post(layer, x, self._attend(q, keys, values, mask, causal=slot is None))
        return x

    def _next_token(self, hidden_last: torch.Tensor) -> torch.Tensor:
        llm = self.model.llm
        return llm.get_output_embeddings()(llm.model.norm(hidden_last)).argmax(dim=-1)  # [B]

    def _run(self) -> None:
        """The whole action on the static buffers: frames/ids/pad in, ``out`` written."""
        model, embed = self.model, self.model.llm.get_input_embeddings()
        tok = embed(self.ids)
        vis = model.embed_images(pixels_from_uint8(self.frames, self.vis_dtype)).to(tok.dtype)
        x = torch.cat([tok[:, :1], vis, tok[:, 1:]], dim=1)
        pos, prefill_mask, valid = self._positions_and_masks()
        h = self._layers(x, pos, None, prefill_mask)
        nxt = self._next_token(h[:, -1])
        self.out[:, 0] = nxt
        last = pos[:, -1:]
        for step in range(1, self.action_dim):
            slot = self.prefill_len + step - 1
            mask = None if valid is None else valid[:, None, None, : slot + 1]
            h = self._layers(embed(nxt)[:, None], last + step, slot, mask)
            nxt = self._next_token(h[:, -1])
            self.out[:, step] = nxt

    def _capture(self) -> None:
        """Warm up on a side stream, then capture ``_run`` as one CUDA graph (eager on failure)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._run()
        except Exception as e:  # noqa: BLE001 - a layer that syncs with the host: run eagerly
            log.warning("CUDA graph capture failed (%s: %s); decoding eagerly",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self.use_graph = False
            torch.cuda.synchronize(self.device)
            return
        self.graph = graph
