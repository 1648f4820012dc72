"""`make demo`: the main job end to end on the embedded default, on CPU.

fixtures (all 27 OXE layouts) -> read back through the registry -> Ray curation of the `demo`
mixture -> mixture report -> a few hundred stream batches -> `vla train` (tiny preset, 2 ranks,
torchrun + gloo + FSDP2) until the action-token accuracy target -> checkpoint -> resume check
(resume from an earlier checkpoint into a fresh run dir; the losses must be bit-identical) ->
curves PNG -> one JSON summary line (the last line printed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pipeline  # noqa: F401  (environment defaults)

DEMO_DATASETS = "[bridge_orig,fractal20220817_data,taco_play]"
TRAIN_ARGS = [
    "nproc=2", "per_device_batch=8", "global_batch=16", "optim.lr=1e-3", "optim.schedule=warmup_cosine",
    "optim.warmup_steps=50", "optim.decay_steps=1500", "optim.min_lr_ratio=0.01", "stop.max_steps=1500",
    "checkpoint.save_every=50", "checkpoint.keep_last=0", "eval.every_steps=25",
]
RESUME_STEPS = 10


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def vla(*args: str) -> subprocess.CompletedProcess:
    """Run one `vla` verb in a child process (as a user would); stop the demo on failure."""
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    print("$ vla " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"demo: `vla {args[0]}` failed with exit code {proc.returncode}")
    return proc


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit("demo: no JSON summary in the output of the previous command")


def stream_demo(curated: str, batches: int = 300) -> dict:
    """Iterate `batches` batches of the curated demo mixture; report throughput and diversity."""
    from pipeline.data.mixture.files import load_mixture
    from pipeline.data.stream.training_stream import StreamConfig, TrainingStream
    from pipeline.model import ActionPromptBuilder
    from pipeline.train.config import TrainConfig
    from pipeline.train.main import build_tokenizer

    tokenizer = build_tokenizer(TrainConfig())
    cfg = StreamConfig(num_workers=0)
    start = time.perf_counter()
    distinct = []
    with TrainingStream(cfg, data_root=curated, mixture=load_mixture("demo"), batch_size=16, seed=0, resolution=112,
                        rank=0, world_size=1, prompt_builder=ActionPromptBuilder(tokenizer)) as stream:
        for _ in range(batches):
            batch = next(stream)
            distinct.append(len({(m[0], m[1]) for m in batch["meta"]}))
        epoch_len = stream.epoch_length()
    seconds = time.perf_counter() - start
    report = {"batches": batches, "frames_per_s": round(batches * 16 / seconds, 1),
              "distinct_episodes_per_batch": round(sum(distinct) / len(distinct), 2),
              "epoch_frames": epoch_len}
    print(json.dumps(report))
    return report


def resume_check(run_dir: str, resume_dir: str, data_root: str, steps: int) -> bool:
    """Resume from an earlier checkpoint in a fresh run dir; losses must equal the original run's."""
    ckpts = sorted(d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.startswith("step_"))
    committed = [d for d in ckpts if os.path.exists(os.path.join(run_dir, "checkpoints", d, "COMMIT"))]
    earlier = [d for d in committed if int(d.split("_")[1]) < steps]
    if not earlier:
        print("resume check: no checkpoint earlier than the final one")
        return False
    start = int(earlier[-1].split("_")[1])
    end = min(steps, start + RESUME_STEPS)
    shutil.rmtree(resume_dir, ignore_errors=True)
    vla("train", f"run_dir={resume_dir}", f"data.data_root={data_root}",
        f"resume={os.path.join(run_dir, 'checkpoints', earlier[-1])}", *TRAIN_ARGS,
        f"stop.max_steps={end}", "stop.accuracy=2.0", "metrics.progress=false")

    def losses(d: str) -> dict[int, float]:
        with open(os.path.join(d, "metrics.jsonl")) as f:
            return {r["step"]: r["loss"] for r in map(json.loads, f)}

    original, resumed = losses(run_dir), losses(resume_dir)
    compared = list(range(start + 1, end + 1))
    ok = bool(compared) and all(resumed.get(s) == original.get(s) for s in compared)
    print(f"resume check: resumed from step {start}, steps {start + 1}..{end}: "
          f"{'losses bit-identical' if ok else 'LOSSES DIFFER'}")
    return ok


def main() -> int:
    t0 = time.perf_counter()
    out = os.path.abspath(os.environ.get("DEMO_OUT", "demo_out"))
    shutil.rmtree(out, ignore_errors=True)
    all_raw, raw, curated = (os.path.join(out, d) for d in ("fixtures_all", "fixtures_demo", "curated"))
    run_dir, resume_dir = os.path.join(out, "run"), os.path.join(out, "run_resume")

    _banner("1/7 fixtures: all 27 datasets of oxe_magic_soup_plus, real feature layouts")
    vla("fixture", f"out={all_raw}", "datasets=all", "episodes=4", "seed=0")
    _banner("2/7 read back through the registry + standardization")
    vla("inspect", f"data={all_raw}", "datasets=all")
    _banner("3/7 Ray curation of the demo mixture (fixtures with more episodes for training)")
    vla("fixture", f"out={raw}", f"datasets={DEMO_DATASETS}", "episodes=24", "image_size=64", "seed=0")
    vla("curate", "mixture=demo", f"source={raw}", f"out={curated}")
    vla("mixture", "show", "demo", f"curated={curated}", "steps=1500", "global_batch=16")
    _banner("4/7 training stream: a few hundred batches")
    stream = stream_demo(curated)
    _banner("5/7 training: tiny preset, 2 ranks (torchrun, gloo, FSDP2) until 95% action-token accuracy")
    summary = _last_json(vla("train", f"run_dir={run_dir}", f"data.data_root={curated}", *TRAIN_ARGS))
    _banner("6/7 resume check")
    resume_ok = resume_check(run_dir, resume_dir, curated, int(summary["steps"]))
    _banner("7/7 curves")
    vla("plot", f"run_dir={run_dir}")
    result = {
        "final_action_accuracy": summary.get("final_action_accuracy"),
        "last_validation": summary.get("last_validation"),
        "steps": summary.get("steps"),
        "stop_reason": summary.get("stop_reason"),
        "run_dir": run_dir,
        "resume_ok": resume_ok,
        "curves_png": os.path.join(run_dir, "training_curves.png"),
        "stream_frames_per_s": stream["frames_per_s"],
        "stream_distinct_episodes_per_batch": stream["distinct_episodes_per_batch"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))
    reached = (result["final_action_accuracy"] or 0) >= 0.95
    return 0 if (reached and resume_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
