"""``make bench-train``: the per-rank 7B training step as it would run in a 64-GPU job, vs a naive baseline.

Needs a CUDA GPU (on CPU it prints one line and exits 2; ``--smoke`` runs the tiny preset on CPU
to exercise the code path). Prints ONE JSON line:
``samples_per_s, mfu, baseline_samples_per_s, baseline_mfu, peak_tflops, speedup, max_mem_gib, device``
(+ details).

Ours: full-depth ``7b`` preset (DINOv2-L + SigLIP-so400m at 224 -> MLP -> Llama-2-7B), one rank
of the job: FSDP2 ``fully_shard`` per unit then the root at world size 1 (bf16 params,
fp32 gradient reduction: the MixedPrecisionPolicy of our training), our activation-checkpointing
policy (``--ac``, default selective), forward + backward + grad clip at ``--batch`` per device; plus
the fused AdamW step timed on a 1/``--world`` shard of the fp32 parameters (what one of 64 ranks
updates). The collectives of the real job (all-gather / reduce-scatter, overlapped with compute
under FSDP2) are not in the number.
Baseline (OpenVLA's setting): the same model, HF eager attention, full activation checkpointing
(every LLM layer and every ViT block), plain bf16 module, forward + backward at ``--baseline-batch``.
FLOPs per sample: ``VLA.flops_per_sample`` = 6 * N * tokens + attention, vision towers included.
Peak: bf16 8192^3 matmuls measured in the same run; MFU = FLOPs/s / measured peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import warnings
from typing import Any

__all__ = ["main", "measure_peak_tflops"]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_tflops(device: Any, n: int = 8192, iters: int = 20) -> float:
    """Dense bf16 matmul throughput (TFLOP/s) of ``n x n x n`` products."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    elapsed = time.perf_counter() - start
    del a, b
    return 2.0 * n ** 3 * iters / elapsed / 1e12


def _batch(model: Any, batch: int, text_len: int, device: Any) -> dict:
    """Random OpenVLA-shaped batch: BOS + prompt tokens, 7 action tokens + EOS supervised."""
    import torch

    size = model.config.image_size
    vocab = int(model.config.vocab_size) - 1
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(3, vocab - 256, (batch, text_len), generator=gen)
    ids[:, 0] = 1
    ids[:, -8:-1] = torch.randint(vocab - 256, vocab, (batch, 7), generator=gen)
    ids[:, -1] = 2
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]
    return {"pixel_values": torch.rand(batch, 3, size, size, generator=gen).to(device),
            "input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, dtype=torch.bool).to(device),
            "labels": labels.to(device)}


def _build(preset: str, device: Any, dtype: Any, *, attn: str) -> Any:
    from pipeline.model import VLAConfig, build_vla

    cfg = VLAConfig(preset=preset, attn_implementation=attn)
    model = build_vla(cfg, vocab_size=32001, pad_token_id=32000, device=device)  # Llama-2 + <PAD>
    return model.to(dtype).train()


def _time_steps(step, steps: int, warmup: int, device: Any) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _ours(args: argparse.Namespace, device: Any, dtype: Any) -> dict:
    import torch

    from pipeline.train.optim import clip_grad_norm
    from pipeline.train.parallel import ParallelDims, apply_activation_checkpointing, apply_fsdp

    model = _build(args.preset, device, dtype, attn="sdpa")
    n_params = model.num_params()
    units = model.fsdp_units()
    apply_activation_checkpointing(units, args.ac, every=2)
    mesh = ParallelDims(world_size=1, mode="full", device_type=device.type).mesh
    apply_fsdp(model, mesh, units=units, param_dtype=dtype, reduce_dtype=torch.float32)
    batch = _batch(model, args.batch, args.text_len, device)
    flops = float(model.flops_per_sample(args.text_len))
    visual = int(model.num_visual_tokens)

    def step() -> None:
        out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        out.loss.backward()
        clip_grad_norm(model, 1.0)
        for p in model.parameters():
            p.grad = None

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fwd_bwd = _time_steps(step, args.steps, args.warmup, device)
    max_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    shapes = [p.numel() for p in model.parameters()]
    model = batch = None  # free before the next measurement
    gc.collect()
    optim = _optimizer_shard_time(shapes, args.world, device, args.steps, args.warmup)
    return {"fwd_bwd_s": fwd_bwd, "optim_s": optim, "flops_per_sample": flops, "params": n_params,
            "max_mem_gib": max_mem, "visual_tokens": visual}


def _optimizer_shard_time(numels: list[int], world: int, device: Any, steps: int, warmup: int) -> float:
    """Fused AdamW on fp32 params/grads of 1/world of every parameter (one rank's FSDP shard)."""
    import torch

    shard = [torch.zeros(max(1, math.ceil(n / world)), device=device, dtype=torch.float32, requires_grad=True)
             for n in numels]
    for p in shard:
        p.grad = torch.randn_like(p) * 1e-3
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(shard, lr=2e-5, **kwargs)
    elapsed = _time_steps(opt.step, steps, warmup, device)
    del opt, shard
    gc.collect()
    return elapsed


def _baseline(args: argparse.Namespace, device: Any, dtype: Any) -> dict:
    """HF eager attention, full activation checkpointing, plain bf16 module, fwd + bwd."""
    model = _build(args.preset, device, dtype, attn="eager")
    with warnings.catch_warnings():  # renamed activation_checkpointing_enable in newer transformers
        warnings.simplefilter("ignore", FutureWarning)
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for enc in model.vision:
        enc.vit.set_grad_checkpointing(True)
    batch = _batch(model, args.baseline_batch, args.text_len, device)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)  # a plain bf16 module takes bf16 images

    def step() -> None:
        out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                    full_logits=True)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    elapsed = _time_steps(step, args.steps, args.warmup, device)
    model = batch = None  # free before the next measurement
    gc.collect()
    return {"fwd_bwd_s": elapsed}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="7b")
    p.add_argument("--batch", type=int, default=16, help="per-device batch of our step")
    p.add_argument("--baseline-batch", type=int, default=32, help="batch of the baseline (OpenVLA: 32)")
    p.add_argument("--text-len", type=int, default=34, help="text tokens per sample (+256 visual = ~290)")
    p.add_argument("--ac", default="selective", choices=("none", "selective", "full"), help="our AC policy")
    p.add_argument("--world", type=int, default=64, help="ranks of the job the optimizer shard is cut for")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="CPU code-path check: tiny preset, tiny sizes")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.baseline_batch, args.steps, args.warmup = "tiny", 2, 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = _parse(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("bench-train needs a CUDA GPU (none found); use --smoke for a CPU code-path check", file=sys.stderr)
        return 2
    from pipeline.train.parallel import init_distributed

    device = torch.device("cuda", 0) if torch.cuda.is_available() and not args.smoke else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    created = init_distributed(device)
    try:
        peak = measure_peak_tflops(device, n=256 if args.smoke else 8192, iters=2 if args.smoke else 20)
        ours = _ours(args, device, torch.bfloat16)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        base = _baseline(args, device, torch.bfloat16)
    finally:
        if created:
            torch.distributed.destroy_process_group()
    step_s = ours["fwd_bwd_s"] + ours["optim_s"]
    sps = args.batch / step_s
    base_sps = args.baseline_batch / base["fwd_bwd_s"]
    flops = ours["flops_per_sample"]
    result = {
        "samples_per_s": round(sps, 3),
        "mfu": round(flops * sps / (peak * 1e12), 4),
        "baseline_samples_per_s": round(base_sps, 3),
        "baseline_mfu": round(flops * base_sps / (peak * 1e12), 4),
        "peak_tflops": round(peak, 1),
        "speedup": round(sps / base_sps, 3),
        "max_mem_gib": round(ours["max_mem_gib"], 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
        "preset": args.preset, "batch": args.batch, "baseline_batch": args.baseline_batch, "ac": args.ac,
        "fwd_bwd_s": round(ours["fwd_bwd_s"], 4), "optim_shard_s": round(ours["optim_s"], 4),
        "baseline_fwd_bwd_s": round(base["fwd_bwd_s"], 4), "flops_per_sample": flops, "params": ours["params"],
        "tokens_per_sample": args.text_len + ours["visual_tokens"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
