"""``make bench-infer``: action rate and memory of bf16 / int8 / int4 inference, and how often int4
picks the same action tokens as bf16.

Needs a CUDA GPU (on CPU it prints one line and exits 2; ``--smoke`` runs the tiny preset on the
CPU in fp32/bf16 to exercise the code path). Prints ONE JSON line: ``<mode>_hz``,
``<mode>_latency_ms``, ``<mode>_peak_mem_gib`` per mode, ``<mode>_token_agreement`` per compared
mode, ``device`` (+ details under ``speed`` and ``agreement``).

Speed: the ``--preset`` model (default ``7b``: DINOv2-L + SigLIP-so400m at 224 -> MLP ->
Llama-2-7B, random weights, nothing downloaded) in each ``--modes`` precision (int8/int4:
bitsandbytes LLM.int8() / NF4 on the LLM decoder Linear layers, the rest bf16; see
:mod:`pipeline.model.quantize`). One action = image preprocessing + vision towers + prefill of
BOS, 256 visual and ``--prompt-tokens`` text tokens + 6 cached decode steps (the 7 action tokens),
batch 1, as ``VLAPolicy.predict_action`` runs it. ``hz`` = actions per second over ``--actions``
timed calls after ``--warmup``; ``peak_mem_gib`` = peak allocated GPU memory while serving them
(weights included); ``weights_gib`` = allocated after loading.

Agreement: the demo model (tiny preset) trained here on the fixture scene for ``--train-steps``,
exported with ``save_pretrained`` and loaded back through ``VLAPolicy.from_pretrained`` in the
``--reference`` precision and in each ``--compare`` precision; the fraction of the 7 action tokens
(and of whole actions) that equal the reference's on ``--frames`` held-out frames, plus each
mode's accuracy against the expert tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["main"]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _random_model(preset: str, mode: str, device: Any) -> Any:
    """The preset with random weights in ``mode`` on ``device`` (Llama-2 vocab + <PAD>)."""
    from pipeline.model import VLAConfig, build_vla
    from pipeline.model.quantize import GPU_MODES, compute_dtype, default_dtype, quantize_llm_linears_

    dtype = compute_dtype(mode)
    with default_dtype(dtype):
        model = build_vla(VLAConfig(preset=preset), vocab_size=32001, pad_token_id=32000, device=device)
    model = model.to(dtype).eval().requires_grad_(False)
    if mode in GPU_MODES:
        quantize_llm_linears_(model, mode, device)
    return model


def _speed(args: argparse.Namespace, mode: str, device: Any) -> dict:
    import torch

    from pipeline.model.inference import _to_pixel_values, greedy_action_ids
    from pipeline.model.quantize import check_mode

    check_mode(mode, device)
    model = _random_model(args.preset, mode, device)
    _free(device)
    weights = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    rng = np.random.default_rng(0)
    vocab = int(model.config.vocab_size) - 1
    prompt = torch.as_tensor(rng.integers(3, vocab - 256, size=(1, args.prompt_tokens)), device=device)
    prompt[:, 0] = 1  # BOS
    images = [rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8) for _ in range(4)]
    vis_dtype = next(model.vision.parameters()).dtype

    def act(i: int) -> None:
        pixels = _to_pixel_values(images[i % len(images)]).to(device, vis_dtype)
        greedy_action_ids(model, pixels, prompt).cpu()

    for i in range(args.warmup):
        act(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(args.actions):
        act(i)
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    params = model.num_params()
    model = None  # free before the next mode
    _free(device)
    return {"hz": round(args.actions / elapsed, 3), "latency_ms": round(1e3 * elapsed / args.actions, 2),
            "peak_mem_gib": round(peak, 2), "weights_gib": round(weights, 2), "params": params}


# -- agreement on the demo model ------------------------------------------------------------------
def _scene_frames(n: int, seed: int, size: int = 112) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """``n`` (primary image, instruction, normalized expert action float32[7]) from fixture scenes."""
    from pipeline.data.fixtures.scene import STEP_M, plan_scene, render_rgb, scene_actions

    rng = np.random.default_rng(seed)
    images, instr, actions = [], [], []
    while len(images) < n:
        scene = plan_scene(rng, 12)
        acts = scene_actions(scene)
        for t in range(scene.num_steps):
            images.append(render_rgb(scene, t, size, size))
            instr.append(scene.instruction)
            actions.append(acts[t] / np.array([STEP_M] * 3 + [1.0] * 4, np.float32))
    return images[:n], instr[:n], np.stack(actions[:n]).astype(np.float32)


def _demo_stats() -> dict:
    from pipeline.data.fixtures.scene import STEP_M

    return {"demo_scene": {"action": {"q01": [-STEP_M] * 3 + [-1.0] * 3 + [0.0],
                                      "q99": [STEP_M] * 3 + [1.0] * 3 + [1.0], "mask": [True] * 6 + [False]},
                           "num_transitions": 0, "num_trajectories": 0}}


def _train_demo(out: str, args: argparse.Namespace, device: Any) -> dict:
    """Train the tiny preset on scene frames (fp32) and export it to ``out``; returns train stats."""
    import torch

    from pipeline.data.fixtures.scene import COLORS
    from pipeline.model import ActionPromptBuilder, VLAConfig, build_demo_tokenizer, build_vla, collate
    from pipeline.model.inference import _to_pixel_values

    tasks = [t.format(c) for t in ("pick up the {} block", "grasp the {} block", "move to the {} block and lift it")
             for c in COLORS]
    tok = build_demo_tokenizer(tasks)
    images, instr, actions = _scene_frames(args.train_frames, seed=1)
    pb = ActionPromptBuilder(tok)
    samples = [pb({"language_instruction": s, "action": a, "pixel_values": _to_pixel_values(im)[0]})
               for im, s, a in zip(images, instr, actions)]
    torch.manual_seed(0)
    model = build_vla(VLAConfig(preset="tiny"), vocab_size=len(tok), pad_token_id=tok.pad_token_id, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    out_stats: dict = {}
    for step in range(args.train_steps):
        batch = collate([samples[i] for i in rng.integers(0, len(samples), args.train_batch)], tok.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items() if hasattr(v, "to")}
        res = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == args.train_steps - 1:
            m = model.compute_metrics(res.predictions, res.targets, pb.action_tokenizer)
            out_stats = {"steps": args.train_steps, "loss": round(res.loss.item(), 4),
                         "train_action_accuracy": round(float(m["action_accuracy"]), 4)}
    model.eval().save_pretrained(out, tokenizer=tok, extra_json={"dataset_statistics.json": _demo_stats()})
    del model, opt
    _free(device)
    return out_stats


def _predict_ids(policy: Any, images: list, instr: list[str], chunk: int = 64) -> np.ndarray:
    return np.concatenate([policy.predict_action_ids(images[i:i + chunk], instr[i:i + chunk])
                           for i in range(0, len(images), chunk)])


def _agreement(args: argparse.Namespace, device: Any) -> dict:
    from pipeline.inference import VLAPolicy

    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        train = _train_demo(tmp, args, device)
        images, instr, actions = _scene_frames(args.frames, seed=2)
        ref = VLAPolicy.from_pretrained(tmp, quantization=args.reference, device=device)
        expert = ref.action_tokenizer.encode(actions)
        ref_ids = _predict_ids(ref, images, instr)
        del ref
        _free(device)
        result: dict = {"reference": args.reference, "frames": args.frames, "train": train,
                        "accuracy": {args.reference: round(float((ref_ids == expert).mean()), 4)}}
        for mode in args.compare:
            try:
                policy = VLAPolicy.from_pretrained(tmp, quantization=mode, device=device)
                ids = _predict_ids(policy, images, instr)
                del policy
                _free(device)
            except Exception as e:  # noqa: BLE001 - report, keep the other numbers
                result[mode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                continue
            result[mode] = {"token_agreement": round(float((ids == ref_ids).mean()), 4),
                            "action_agreement": round(float((ids == ref_ids).all(axis=1).mean()), 4)}
            result["accuracy"][mode] = round(float((ids == expert).mean()), 4)
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench.infer", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="7b", help="model preset timed for speed (random weights)")
    p.add_argument("--modes", default="bf16,int8,int4", help="precisions timed for speed")
    p.add_argument("--reference", default="bf16", help="precision the agreement is measured against")
    p.add_argument("--compare", default="int4,int8", help="precisions compared with --reference")
    p.add_argument("--actions", type=int, default=50, help="timed actions per mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=24, help="text tokens of the prompt (BOS included)")
    p.add_argument("--frames", type=int, default=512, help="held-out scene frames for the agreement")
    p.add_argument("--train-steps", type=int, default=300, help="demo model training steps")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-frames", type=int, default=2048)
    p.add_argument("--smoke", action="store_true", help="CPU code-path check: tiny preset, fp32/bf16, a few actions")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.modes, args.reference, args.compare = "tiny", "fp32,bf16", "fp32", "bf16"
        args.actions, args.warmup, args.frames = 2, 1, 4
        args.train_steps, args.train_batch, args.train_frames = 2, 4, 12
    args.modes = [m for m in args.modes.split(",") if m]
    args.compare = [m for m in args.compare.split(",") if m]
    return args


def _flatten(speed: dict, agreement: dict) -> dict:
    flat: dict = {}
    for mode, s in speed.items():
        for key in ("hz", "latency_ms", "peak_mem_gib") if "hz" in s else ():
            flat[f"{mode}_{key}"] = s[key]
    for mode in agreement.get("accuracy", {}):
        if mode != agreement["reference"] and "token_agreement" in agreement.get(mode, {}):
            flat[f"{mode}_token_agreement"] = agreement[mode]["token_agreement"]
    return flat


def main(argv: list[str] | None = None) -> int:
    import torch

    from pipeline.errors import UserError

    args = _parse(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("bench-infer needs a CUDA GPU (none found); use --smoke for a CPU code-path check", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if torch.cuda.is_available() and not args.smoke else torch.device("cpu")
    speed: dict = {}
    for mode in args.modes:
        try:
            speed[mode] = _speed(args, mode, device)
        except UserError as e:  # e.g. bitsandbytes missing: say so, keep the other modes
            speed[mode] = {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - e.g. OOM in one mode
            speed[mode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            _free(device)
    agreement = _agreement(args, device)
    result = {
        **_flatten(speed, agreement),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
        "preset": args.preset, "batch": 1, "prompt_tokens": args.prompt_tokens, "actions": args.actions,
        "speed": speed, "agreement": agreement,
    }
    print(json.dumps(result))
    failed = [m for m, s in speed.items() if "error" in s] + [m for m in args.compare if "error" in agreement.get(m, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
