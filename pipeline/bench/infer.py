"""``make bench-infer``: action rate, latency and memory of bf16 / int8 / int4 inference, how often
each mode picks the plain bf16 path's action tokens, and the server's overhead beside model time.

Needs a CUDA GPU (on CPU it prints one line and exits 2; ``--smoke`` runs the tiny preset on the
CPU in fp32/bf16 to exercise every code path). Prints ONE JSON line: ``<mode>_hz``,
``<mode>_latency_ms``, ``<mode>_peak_mem_gib``, ``<mode>_decode`` (cuda_graph | eager) per mode,
``<mode>_pixels_equal`` (device-scaled pixels bit-equal to the stream's scaling), ``<mode>_plain_hz``
/ ``<mode>_plain_latency_ms`` for ``--plain-modes``, ``<mode>_token_agreement``,
``serve_<style>_overhead_ms`` beside ``serve_<style>_model_ms``, ``torch`` / ``transformers`` /
``bitsandbytes`` versions, ``device`` (+ details under ``speed``, ``agreement``, ``serve``).

Speed: the ``--preset`` model (default ``7b``: DINOv2-L + SigLIP-so400m at 224 -> MLP ->
Llama-2-7B, random weights, nothing downloaded) in each ``--modes`` precision (int8/int4:
bitsandbytes LLM.int8() / NF4 on the LLM decoder Linear layers, the rest bf16; see
:mod:`pipeline.model.quantize`). One action = ``VLAPolicy.action_ids`` on one ``--frame`` camera
frame (uint8, resized on the CPU to the model size exactly as training resizes) and a
``--prompt-tokens`` prompt: upload, vision towers, prefill of BOS + 256 visual + text tokens, 6
cached decode steps, ids back on the host. ``hz`` = actions per second over ``--actions`` timed
calls after ``--warmup`` (the first call captures the CUDA graph); ``peak_mem_gib`` = peak
allocated GPU memory while serving them (weights included); ``weights_gib`` = allocated after
loading; ``plain_*``: the same calls through the reference decoder (HF forward + DynamicCache).
``--compile`` / ``--sdpa``: the fast decoder's :class:`~pipeline.model.decode.DecodeOptions`.

Agreement: the demo model (tiny preset) trained here on the fixture scene for ``--train-steps``,
exported and loaded back through ``VLAPolicy.from_pretrained``; the reference is its plain
(HF + DynamicCache) decoder in ``--reference`` precision. ``<mode>_token_agreement``: the fraction
of the 7 action tokens on ``--frames`` held-out frames that the default (fast) decoder in
``<mode>`` picks equal to the reference, for the reference precision and each ``--compare`` mode;
``<reference>_eager_token_agreement``: the fast decoder without CUDA graphs.

Serve: a real ``vla serve`` HTTP server (:mod:`pipeline.serve_http`) around the ``--serve-mode``
policy in this process; ``--serve-requests`` POST /act per style from a client thread: OpenVLA's
json_numpy uint8 frame and a base64 JPEG of the same frame. ``overhead_ms`` = median (round trip
- model time reported by the server); model time includes the image resize.

Modules imported here run on the GPU machine's software (torch, transformers, timm, numpy, PIL):
no omegaconf, ray, tensorflow or gcsfs; bitsandbytes only for int8/int4.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gc
import http.client
import io
import json
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

__all__ = ["main"]

SERVE_INSTRUCTION = "pick up the red block"


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _camera_frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` smooth camera-like uint8 RGB frames (upsampled noise: JPEG-friendly, unlike raw noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3),
                                                    dtype=np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
            for _ in range(n)]


def _random_policy(preset: str, mode: str, device: Any, decode: Any = None) -> Any:
    """A ``VLAPolicy`` around the preset with random weights in ``mode`` on ``device`` (Llama-2 vocab
    + <PAD>; the demo text tokenizer, whose ids all fit that vocab)."""
    from pipeline.inference import DecodeOptions, VLAPolicy
    from pipeline.model import (
        ActionPromptBuilder,
        ActionTokenizer,
        VLAConfig,
        build_demo_tokenizer,
        build_vla,
    )
    from pipeline.model.quantize import GPU_MODES, compute_dtype, default_dtype, quantize_llm_linears_

    dtype = compute_dtype(mode)
    with default_dtype(dtype):
        model = build_vla(VLAConfig(preset=preset), vocab_size=32001, pad_token_id=32000, device=device)
    model = model.to(dtype).eval().requires_grad_(False)
    if mode in GPU_MODES:
        quantize_llm_linears_(model, mode, device)
    tok = build_demo_tokenizer([SERVE_INSTRUCTION])
    at = ActionTokenizer(base_vocab_size=int(tok.vocab_size))
    return VLAPolicy(model, tok, at, ActionPromptBuilder(tok, at), {}, mode, f"random {preset}", device,
                     decode=decode or DecodeOptions())


def _time_actions(policy: Any, frames: list, prompt: list[int], *, warmup: int, actions: int,
                  device: Any) -> tuple[float, float]:
    """(seconds per action, peak GiB) of ``actions`` timed ``action_ids`` calls after ``warmup``."""
    import torch

    for i in range(warmup):
        policy.action_ids([frames[i % len(frames)]], [prompt])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(actions):
        policy.action_ids([frames[i % len(frames)]], [prompt])
    _sync(device)
    elapsed = (time.perf_counter() - start) / actions
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return elapsed, peak


def _speed(args: argparse.Namespace, mode: str, device: Any) -> dict:
    import torch

    from pipeline.model.decode import DecodeOptions
    from pipeline.model.quantize import check_mode

    check_mode(mode, device)
    policy = _random_policy(args.preset, mode, device, DecodeOptions(compile=args.compile, sdpa_backend=args.sdpa))
    _free(device)
    weights = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    rng = np.random.default_rng(0)
    prompt = [1, *map(int, rng.integers(3, 32000 - 256, size=args.prompt_tokens - 1))]  # BOS + text
    frames = _camera_frames(4, *args.frame)
    start = time.perf_counter()
    uint8 = policy.frames(frames)
    preprocess_ms = 1e3 * (time.perf_counter() - start) / len(frames)
    stream = uint8.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1.0 / 255.0)  # the stream's scaling
    pixels_equal = bool(np.array_equal(policy.pixel_values(frames).cpu().numpy(), stream))  # scaled on the device
    seconds, peak = _time_actions(policy, frames, prompt, warmup=args.warmup, actions=args.actions, device=device)
    out = {"hz": round(1.0 / seconds, 3), "latency_ms": round(1e3 * seconds, 2), "peak_mem_gib": round(peak, 2),
           "weights_gib": round(weights, 2), "params": policy.model.num_params(), "decode": policy.decode_path,
           "preprocess_ms": round(preprocess_ms, 2), "frame": list(args.frame), "pixels_equal": pixels_equal,
           "compile": args.compile, "sdpa": args.sdpa}
    if mode in args.plain_modes:
        plain = dataclasses.replace(policy, decode=DecodeOptions(static_cache=False))
        seconds, _ = _time_actions(plain, frames, prompt, warmup=1, actions=max(1, args.actions // 5), device=device)
        sample = frames[: min(len(frames), args.actions)]
        fast_ids = np.concatenate([policy.action_ids([f], [prompt]) for f in sample])
        plain_ids = np.concatenate([plain.action_ids([f], [prompt]) for f in sample])
        out.update(plain_hz=round(1.0 / seconds, 3), plain_latency_ms=round(1e3 * seconds, 2),
                   plain_agreement=round(float((fast_ids == plain_ids).mean()), 4))
    if mode == args.serve_mode:
        out["serve"] = _serve_overhead(policy, frames[0], args.serve_requests)
    del policy
    _free(device)
    return out


# -- server overhead ------------------------------------------------------------------------------
def _post(url_host: str, port: int, body: bytes) -> tuple[float, float]:
    """(round-trip ms, model ms from the server's header) of one POST /act; the answer is parsed."""
    from pipeline.serve_http import MODEL_LATENCY_HEADER

    start = time.perf_counter()
    conn = http.client.HTTPConnection(url_host, port, timeout=120)
    try:
        conn.request("POST", "/act", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /act -> {resp.status}: {data[:200]!r}")
        json.loads(data)
        model_ms = float(resp.getheader(MODEL_LATENCY_HEADER))
    finally:
        conn.close()
    return 1e3 * (time.perf_counter() - start), model_ms


def _serve_overhead(policy: Any, frame: np.ndarray, requests: int) -> dict:
    """Median round trip, model time and their difference per request style, through a real server."""
    from PIL import Image

    from pipeline.serve_http import make_server
    from pipeline.serve_wire import encode_ndarray

    jpeg = io.BytesIO()
    Image.fromarray(frame).save(jpeg, format="JPEG", quality=90)
    bodies = {"json_numpy": {"image": encode_ndarray(frame), "instruction": SERVE_INSTRUCTION},
              "jpeg": {"image": base64.b64encode(jpeg.getvalue()).decode(), "instruction": SERVE_INSTRUCTION}}
    server = make_server(policy, "127.0.0.1", 0, max_body_mb=64)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    out: dict = {"requests": requests, "frame": list(frame.shape)}
    try:
        host, port = server.server_address[:2]
        for style, payload in bodies.items():
            body = json.dumps(payload).encode()
            _post(host, port, body)  # warm-up
            times = np.array([_post(host, port, body) for _ in range(requests)])
            out[style] = {"round_trip_ms": round(float(np.median(times[:, 0])), 3),
                          "model_ms": round(float(np.median(times[:, 1])), 3),
                          "overhead_ms": round(float(np.median(times[:, 0] - times[:, 1])), 3),
                          "body_bytes": len(body)}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    return out


# -- agreement on the demo model ------------------------------------------------------------------
def _scene_frames(n: int, seed: int, size: int = 112) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """``n`` (primary image, instruction, normalized expert action float32[7]) from fixture scenes."""
    from pipeline.data.fixtures.scene import ACTION_SCALE, plan_scene, render_rgb, scene_actions

    rng = np.random.default_rng(seed)
    images, instr, actions = [], [], []
    while len(images) < n:
        scene = plan_scene(rng, 12)
        acts = scene_actions(scene)
        for t in range(scene.num_steps):
            images.append(render_rgb(scene, t, size, size))
            instr.append(scene.instruction)
            actions.append(acts[t] / ACTION_SCALE)  # each movement level -> +-1
    return images[:n], instr[:n], np.stack(actions[:n]).astype(np.float32)


def _demo_stats() -> dict:
    from pipeline.data.fixtures.scene import ACTION_SCALE

    scale = [float(v) for v in ACTION_SCALE[:6]]
    return {"demo_scene": {"action": {"q01": [-v for v in scale] + [0.0],
                                      "q99": scale + [1.0], "mask": [True] * 6 + [False]},
                           "num_transitions": 0, "num_trajectories": 0}}


def _train_demo(out: str, args: argparse.Namespace, device: Any) -> dict:
    """Train the tiny preset on scene frames (fp32) and export it to ``out``; returns train stats."""
    import torch

    from pipeline.data.fixtures.scene import COLORS
    from pipeline.model import ActionPromptBuilder, VLAConfig, build_demo_tokenizer, build_vla, collate
    from pipeline.model.export_format import save_model_dir
    from pipeline.model.image_input import ImagePreprocess, pixels_from_uint8

    tasks = [t.format(c) for t in ("pick up the {} block", "grasp the {} block", "move to the {} block and lift it")
             for c in COLORS]
    tok = build_demo_tokenizer(tasks)
    images, instr, actions = _scene_frames(args.train_frames, seed=1)
    pb = ActionPromptBuilder(tok)
    model = build_vla(VLAConfig(preset="tiny"), vocab_size=len(tok), pad_token_id=tok.pad_token_id, device=device)
    pixels = pixels_from_uint8(torch.from_numpy(ImagePreprocess(size=model.config.image_size).frames(images)))
    samples = [pb({"language_instruction": s, "action": a, "pixel_values": p})
               for p, s, a in zip(pixels, instr, actions)]
    torch.manual_seed(0)
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
    save_model_dir(model.eval(), out, tokenizer=tok, norm_stats=_demo_stats(), dtype=None)
    del model, opt
    _free(device)
    return out_stats


def _predict_ids(policy: Any, images: list, instr: list[str], chunk: int = 64) -> np.ndarray:
    return np.concatenate([policy.predict_action_ids(images[i:i + chunk], instr[i:i + chunk])
                           for i in range(0, len(images), chunk)])


def _agreement(args: argparse.Namespace, device: Any) -> dict:
    from pipeline.inference import VLAPolicy
    from pipeline.model.decode import DecodeOptions

    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        train = _train_demo(tmp, args, device)
        images, instr, actions = _scene_frames(args.frames, seed=2)
        ref = VLAPolicy.from_pretrained(tmp, quantization=args.reference, device=device,
                                        decode=DecodeOptions(static_cache=False))
        expert = ref.action_tokenizer.encode(actions)
        ref_ids = _predict_ids(ref, images, instr)
        del ref
        _free(device)
        result: dict = {"reference": f"{args.reference} plain", "frames": args.frames, "train": train,
                        "accuracy": {f"{args.reference}_plain": round(float((ref_ids == expert).mean()), 4)}}
        variants = [(m, m, DecodeOptions()) for m in [args.reference, *args.compare]]
        variants.append((f"{args.reference}_eager", args.reference, DecodeOptions(cuda_graph=False)))
        for name, mode, options in variants:
            try:
                policy = VLAPolicy.from_pretrained(tmp, quantization=mode, device=device, decode=options)
                ids = _predict_ids(policy, images, instr)
                path = policy.decode_path
                del policy
                _free(device)
            except Exception as e:  # noqa: BLE001 - report, keep the other numbers
                result[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                continue
            result[name] = {"token_agreement": round(float((ids == ref_ids).mean()), 4),
                            "action_agreement": round(float((ids == ref_ids).all(axis=1).mean()), 4),
                            "decode": path}
            result["accuracy"][name] = round(float((ids == expert).mean()), 4)
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.model.decode import SDPA_BACKENDS

    p = argparse.ArgumentParser(prog="python -m pipeline.bench.infer", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="7b", help="model preset timed for speed (random weights)")
    p.add_argument("--modes", default="bf16,int8,int4", help="precisions timed for speed ('' = none)")
    p.add_argument("--plain-modes", default="bf16", help="modes also timed through the plain (reference) decoder")
    p.add_argument("--serve-mode", default="bf16", help="mode whose policy the server overhead is measured with ('' = skip)")
    p.add_argument("--serve-requests", type=int, default=20, help="timed POST /act per request style")
    p.add_argument("--reference", default="bf16", help="precision of the plain-decoder reference tokens")
    p.add_argument("--compare", default="int4,int8", help="precisions compared with the reference")
    p.add_argument("--no-agreement", action="store_true", help="skip the demo-model agreement (speed only)")
    p.add_argument("--compile", action="store_true", help="fast decoder: torch.compile the per-layer blocks")
    p.add_argument("--sdpa", default="auto", choices=SDPA_BACKENDS, help="fast decoder's SDPA backend")
    p.add_argument("--actions", type=int, default=50, help="timed actions per mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=24, help="text tokens of the prompt (BOS included)")
    p.add_argument("--frame", default="480x640", help="camera frame HxW resized to the model size per action")
    p.add_argument("--frames", type=int, default=512, help="held-out scene frames for the agreement")
    p.add_argument("--train-steps", type=int, default=300, help="demo model training steps")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-frames", type=int, default=2048)
    p.add_argument("--smoke", action="store_true", help="CPU code-path check: tiny preset, fp32/bf16, a few actions")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.modes, args.reference, args.compare = "tiny", "fp32,bf16", "fp32", "bf16"
        args.plain_modes, args.serve_mode, args.serve_requests, args.frame = "fp32", "fp32", 1, "120x160"
        args.actions, args.warmup, args.frames = 2, 1, 4
        args.train_steps, args.train_batch, args.train_frames = 2, 4, 12
    args.modes, args.compare, args.plain_modes = (
        [m for m in v.split(",") if m] for v in (args.modes, args.compare, args.plain_modes))
    try:
        args.frame = tuple(int(v) for v in args.frame.lower().split("x"))
        assert len(args.frame) == 2 and min(args.frame) > 0
    except (ValueError, AssertionError):
        p.error(f"--frame {args.frame}: expected HxW, e.g. 480x640")
    return args


def _flatten(speed: dict, agreement: dict) -> dict:
    flat: dict = {}
    for mode, s in speed.items():
        for key in ("hz", "latency_ms", "peak_mem_gib", "decode", "pixels_equal", "plain_hz", "plain_latency_ms"):
            if key in s:
                flat[f"{mode}_{key}"] = s[key]
        for style in ("json_numpy", "jpeg"):
            if style in s.get("serve", {}):
                flat[f"serve_{style}_overhead_ms"] = s["serve"][style]["overhead_ms"]
                flat[f"serve_{style}_model_ms"] = s["serve"][style]["model_ms"]
    for name, value in agreement.items():
        if isinstance(value, dict) and "token_agreement" in value:
            flat[f"{name}_token_agreement"] = value["token_agreement"]
    return flat


def _versions() -> dict:
    import torch
    import transformers

    bnb = sys.modules.get("bitsandbytes")
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "bitsandbytes": getattr(bnb, "__version__", None)}


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
    agreement = {} if args.no_agreement else _agreement(args, device)
    result = {
        **_flatten(speed, agreement),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
        **_versions(),
        "preset": args.preset, "batch": 1, "prompt_tokens": args.prompt_tokens, "actions": args.actions,
        "speed": speed, "agreement": agreement,
    }
    print(json.dumps(result))
    failed = [m for m, s in speed.items() if "error" in s] + [m for m in args.compare if "error" in agreement.get(m, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
