"""``make bench-train``: the per-rank 7B training step, its levers, and a naive baseline, in one run.

Needs a CUDA GPU (on CPU it prints one line and exits 2; ``--smoke`` runs every variant for one
step on the tiny preset on CPU to exercise the code paths). Prints one JSON line per variant
(``pipeline.bench.train_variants``), as it finishes, then a summary line for the chosen default:
``{"mfu", "speedup", "samples_per_s", "baseline_samples_per_s", "baseline_mfu", "peak_tflops", ...}``.

Ours (every ``ours`` variant): the full-depth ``7b`` preset (DINOv2-L + SigLIP-so400m at 224 -> MLP
-> Llama-2-7B) as one rank of a 64-GPU job: ``parallelize`` (the code ``vla train`` runs) at world
size 1, forward + backward + grad clip at ``--batch`` per device, plus the fused AdamW step timed
once on a 1/``--world`` shard of fp32 parameters (what one of 64 ranks updates). The collectives
of the real job (all-gather / reduce-scatter, overlapped with compute under FSDP2) are not in it.
Baseline: OpenVLA's setting, forward + backward at ``--baseline-batch``.
FLOPs per sample: ``VLA.flops_per_sample`` (6 * N * tokens + attention, vision towers included).
Peak: bf16 8192^3 matmuls measured in the same run; MFU = FLOPs/s / measured peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from typing import Any

from pipeline.bench.train_variants import VARIANTS, Variant, build_model, define_variant, float8_unavailable
from pipeline.errors import UserError

__all__ = ["main", "measure_peak_tflops"]

SMOKE_MODEL = {"llm_num_layers": 2, "vision_depth": 2}


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


def _time_steps(step, steps: int, warmup: int, device: Any) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _step_fn(model: Any, variant: Variant, batch: dict) -> Any:
    """One micro-step of the variant: forward, backward (+ grad clip for ours), grads dropped."""
    from pipeline.train.optim import clip_grad_norm

    if variant.kind != "ours":  # a plain bf16 module takes bf16 images (FSDP2 casts them for ours)
        batch = dict(batch, pixel_values=batch["pixel_values"].to(next(model.parameters()).dtype))
    full_logits = variant.full_logits or variant.kind == "baseline"

    def step() -> None:
        out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                    full_logits=full_logits)
        out.loss.backward()
        if variant.kind == "ours":
            clip_grad_norm(model, 1.0)
        for p in model.parameters():
            p.grad = None

    return step


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
    return elapsed


class _Run:
    """State shared by the variants of one run: device, mesh, peak, optimizer time, results."""

    def __init__(self, args: argparse.Namespace, device: Any) -> None:
        from pipeline.train.parallel import ParallelDims

        self.args = args
        self.device = device
        self.mesh = ParallelDims(world_size=1, mode="full", device_type=device.type).mesh
        self.peak = measure_peak_tflops(device, n=256 if args.smoke else 8192, iters=2 if args.smoke else 20)
        self.optim_s: float | None = None
        self.results: dict[str, dict] = {}

    def measure(self, variant: Variant) -> dict:
        import torch

        args, device = self.args, self.device
        overrides = SMOKE_MODEL if args.smoke else {}
        model = build_model(variant, preset=args.preset, overrides=overrides, device=device, mesh=self.mesh,
                            smoke=args.smoke)
        batch_size = args.baseline_batch if variant.kind == "baseline" else args.batch
        batch = _batch(model, batch_size, args.text_len, device)
        flops = float(model.flops_per_sample(args.text_len))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = _step_fn(model, variant, batch)
        fwd_bwd = _time_steps(step, args.steps, args.warmup, device)
        max_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        profile = self._profile(variant, step) if variant.name in args.profile_variants else None
        if variant.kind == "ours" and self.optim_s is None:
            numels = [p.numel() for p in model.parameters()]
            model = batch = step = None
            self.optim_s = _optimizer_shard_time(numels, args.world, device, args.steps, args.warmup)
        optim_s = self.optim_s if variant.kind == "ours" else 0.0
        sps = batch_size / (fwd_bwd + optim_s)
        result = {"variant": variant.name, "kind": variant.kind, "samples_per_s": round(sps, 3),
                  "mfu": round(flops * sps / (self.peak * 1e12), 4), "batch": batch_size,
                  "step_s": round(fwd_bwd + optim_s, 4), "fwd_bwd_s": round(fwd_bwd, 4),
                  "optim_shard_s": round(optim_s, 4), "max_mem_gib": round(max_mem, 2),
                  "flops_per_sample": flops, "fsdp": variant.fsdp, "note": variant.note}
        if variant.full_logits or variant.float8 or variant.fp32_master:
            result.update(full_logits=variant.full_logits, float8=variant.float8, fp32_master=variant.fp32_master)
        if profile:
            result["profile"] = profile
        return result

    def _profile(self, variant: Variant, step: Any) -> str:
        """Two more steps under torch.profiler; the top kernels table goes to ``--profile-dir``."""
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(2):
                step()
            _sync(self.device)
        sort = "cuda_time_total" if self.device.type == "cuda" else "cpu_time_total"
        os.makedirs(self.args.profile_dir, exist_ok=True)
        path = os.path.join(self.args.profile_dir, f"profile_{variant.name}.txt")
        with open(path, "w") as f:
            f.write(prof.key_averages().table(sort_by=sort, row_limit=40))
        del prof
        torch.cuda.empty_cache() if self.device.type == "cuda" else None
        return path


def _cleanup(device: Any) -> None:
    import torch

    gc.collect()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()  # compiled graphs of the last variant hold its modules
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _run_variant(run: _Run, variant: Variant) -> dict:
    """Measure one variant; an error (OOM, a kernel a torch version lacks) is its line, not the end."""
    if variant.float8 and (why := float8_unavailable(run.device)):
        return {"variant": variant.name, "skipped": why}
    try:
        result = run.measure(variant)
    except Exception as e:  # noqa: BLE001 - reported per variant; the other variants still run
        result = {"variant": variant.name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    finally:
        _cleanup(run.device)
    base = run.results.get("baseline", {}).get("samples_per_s")
    if base and "samples_per_s" in result and variant.kind != "baseline":
        result["speedup"] = round(result["samples_per_s"] / base, 3)
    return result


def _summary(run: _Run, default: str) -> dict:
    """The final line: the chosen default's figures vs the baseline, plus the best variant measured."""
    import torch

    ours = run.results.get(default, {})
    base = run.results.get("baseline", {})
    measured = {k: v for k, v in run.results.items() if "mfu" in v and v["kind"] == "ours" and not v.get("float8")}
    best = max(measured, key=lambda k: measured[k]["mfu"], default=None)
    sps, base_sps = ours.get("samples_per_s"), base.get("samples_per_s")
    device = run.device
    return {
        "variant": default, "mfu": ours.get("mfu"),
        "speedup": round(sps / base_sps, 3) if sps and base_sps else None,
        "samples_per_s": sps, "baseline_samples_per_s": base_sps, "baseline_mfu": base.get("mfu"),
        "peak_tflops": round(run.peak, 1), "max_mem_gib": ours.get("max_mem_gib"),
        "best_variant": best, "best_mfu": measured[best]["mfu"] if best else None,
        "failed": sorted(k for k, v in run.results.items() if "error" in v),
        "skipped": sorted(k for k, v in run.results.items() if "skipped" in v),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__, "preset": run.args.preset, "batch": run.args.batch,
        "baseline_batch": run.args.baseline_batch, "text_len": run.args.text_len, "world": run.args.world,
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench.train", description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="all",
                   help=f"comma-separated, in order, or 'all' ({', '.join(VARIANTS)})")
    p.add_argument("--define", action="append", default=[], metavar="NAME:key=value,...",
                   help="an extra ours-variant from FSDPConfig fields (repeatable; runs after --variants)")
    p.add_argument("--default", default="default", help="the variant the summary line reports")
    p.add_argument("--preset", default="7b")
    p.add_argument("--batch", type=int, default=16, help="per-device batch of our step")
    p.add_argument("--baseline-batch", type=int, default=32, help="batch of the baseline (OpenVLA: 32)")
    p.add_argument("--text-len", type=int, default=34, help="text tokens per sample (+256 visual = ~290)")
    p.add_argument("--world", type=int, default=64, help="ranks of the job the optimizer shard is cut for")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", default="", help="comma-separated variants to profile (2 extra steps each)")
    p.add_argument("--profile-dir", default=os.environ.get("OUT", "runs/bench_train"))
    p.add_argument("--smoke", action="store_true", help="CPU code-path check: tiny preset, one step per variant")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.baseline_batch, args.steps, args.warmup = "tiny", 2, 2, 1, 1
        args.text_len = min(args.text_len, 16)
    names = list(VARIANTS) if args.variants == "all" else [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    try:
        args.selected = [VARIANTS[n] for n in names] + [define_variant(s) for s in args.define]
    except (ValueError, UserError) as e:
        p.error(str(e))
    args.profile_variants = {n.strip() for n in args.profile.split(",") if n.strip()}
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
        run = _Run(args, device)
        for variant in args.selected:
            run.results[variant.name] = _run_variant(run, variant)
            print(json.dumps(run.results[variant.name]), flush=True)
        print(json.dumps(_summary(run, args.default)), flush=True)
    finally:
        if created:
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
