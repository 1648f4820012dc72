"""``make bench-stream``: our training stream vs an OpenVLA/Octo-style tf.data loader, same data, same run.

Prints ONE JSON line. Both loaders read the same curated-format fixture (written here by
``pipeline.data.fixtures.curated``: 256x256 JPEG frames, two datasets) and produce 224x224 frames. Each side runs in its
own subprocess (fair peak RSS); CPU time is summed over the side's processes (our decode workers
included, TF's thread pool included) so ``*_per_core`` = frames per CPU-second. ``*cores_used`` =
CPU-seconds per wall second: on a shared, oversubscribed machine the wall-clock figures mostly
measure how much CPU each side got (TF's many threads win a larger share): compare per core.
``loader_rss_mb`` = peak RSS minus the RSS after importing the framework (torch + tokenizer for
ours, tensorflow for the reference), decode workers included.

Reference (built the way OpenVLA/Octo build theirs): per dataset a ``TFRecordDataset`` over its
shards read in order, episodes parsed and flattened to frames, the datasets mixed with
``tf.data.Dataset.sample_from_datasets`` (weights ∝ frames), a frame shuffle buffer of
``--reference-buffer`` encoded frames, then decode + Lanczos3/antialias resize in
``map(num_parallel_calls=AUTOTUNE)``, batch. Run twice: without goal relabeling (the stronger
baseline: ``reference_*``) and with OpenVLA's uniform goal relabeling, whose goal image is decoded
and resized too (``reference_goal_*``). Ours also tokenizes the prompt and collates to torch.

Usage: ``python -m pipeline.bench.stream [--frames 3000] [--batches 50] [--workers 2] [--buffer-mb 32]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

__all__ = ["main"]

# ------------------------------------------------------------------------------------ measurements
def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status_mb(pid: int, key: str = "VmHWM") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _distinct(metas: list[list]) -> float:
    return float(np.mean([len({(m[0], m[1]) for m in batch}) for batch in metas]))


def _side_ours(args: argparse.Namespace, datasets: list[str]) -> dict:
    from pipeline.data.fixtures.curated import INSTRUCTIONS
    from pipeline.data.mixture.files import Mixture
    from pipeline.data.stream.training_stream import StreamConfig, TrainingStream
    from pipeline.model.prompt import ActionPromptBuilder
    from pipeline.model.text_tokenizer import build_demo_tokenizer

    builder = ActionPromptBuilder(build_demo_tokenizer(INSTRUCTIONS))
    mixture = Mixture(name="bench", datasets={d: 1.0 for d in datasets}, balance_by_size=True)
    cfg = StreamConfig(num_workers=args.workers, buffer_bytes=args.buffer_mb * 2**20,
                       prefetch_batches=max(2, 2 * args.workers),
                       index_cache_dir=os.path.join(args.data, "_index"))
    import torch  # noqa: F401  (the trainer has torch loaded anyway: not the loader's memory)

    base_mb = _proc_status_mb(os.getpid(), "VmRSS")
    stream = TrainingStream(cfg, data_root=args.data, mixture=mixture, batch_size=args.batch, seed=0,
                            resolution=224, rank=0, world_size=1, prompt_builder=builder)
    for _ in range(args.warmup):
        next(stream)
    pids = [os.getpid(), *stream.worker_pids()]
    cpu0, t0 = sum(_proc_cpu(p) for p in pids), time.perf_counter()
    metas = [next(stream)["meta"] for _ in range(args.batches)]
    wall, cpu = time.perf_counter() - t0, sum(_proc_cpu(p) for p in pids) - cpu0
    workers_mb = sum(_proc_status_mb(p) for p in pids[1:])
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_cache = stream.stats["peak_cache_bytes"]
    stream.close()
    frames = args.batches * args.batch
    return {"frames_per_s": frames / wall, "frames_per_s_per_core": frames / cpu, "cpu_s": cpu,
            "processes": len(pids), "rss_mb": main_mb + workers_mb, "loader_rss_mb": main_mb - base_mb + workers_mb,
            "distinct_episodes_per_batch": _distinct(metas),
            "cache_peak_mb": peak_cache / 2**20}


def _side_reference(args: argparse.Namespace, datasets: list[str]) -> dict:
    import tensorflow as tf

    from pipeline.data.manifest import CuratedDataset

    base_mb = _proc_status_mb(os.getpid(), "VmRSS")  # tensorflow imported
    res = 224
    feats = {"steps/observation/image_primary": tf.io.VarLenFeature(tf.string),
             "steps/action": tf.io.VarLenFeature(tf.float32),
             "steps/language_instruction": tf.io.VarLenFeature(tf.string),
             "episode_metadata/episode_id": tf.io.FixedLenFeature([], tf.string)}

    def parse(record):
        ex = tf.io.parse_single_example(record, feats)
        images = tf.sparse.to_dense(ex["steps/observation/image_primary"])
        steps = tf.shape(images)[0]
        traj = {"image": images, "action": tf.reshape(tf.sparse.to_dense(ex["steps/action"]), [steps, 7]),
                "instruction": tf.sparse.to_dense(ex["steps/language_instruction"]),
                "episode_id": tf.repeat(ex["episode_metadata/episode_id"], steps)}
        if args.reference_goal:  # OpenVLA/Octo uniform goal relabeling: a goal image at t' >= t per frame
            t = tf.range(steps)
            goal = t + tf.cast(tf.random.uniform([steps]) * tf.cast(steps - t, tf.float32), tf.int32)
            traj["goal_image"] = tf.gather(images, tf.minimum(goal, steps - 1))
        return traj

    def resize(data):
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        img = tf.image.resize(img, (res, res), method="lanczos3", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    def decode(frame):
        frame["image"] = resize(frame["image"])
        if args.reference_goal:
            frame["goal_image"] = resize(frame["goal_image"])
        return frame

    per_ds, sizes = [], []
    for name in datasets:
        dataset = CuratedDataset(args.data, name)
        manifest = dataset.manifest()
        files = [url for url, _ in dataset.shards()]
        sizes.append(manifest["total_frames"])
        ds = tf.data.TFRecordDataset(files).repeat().map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        per_ds.append(ds.flat_map(tf.data.Dataset.from_tensor_slices))
    weights = [s / sum(sizes) for s in sizes]
    mixed = tf.data.Dataset.sample_from_datasets(per_ds, weights).shuffle(args.reference_buffer)
    mixed = mixed.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch).prefetch(2)
    it = mixed.as_numpy_iterator()
    for _ in range(args.warmup):
        next(it)
    cpu0, t0 = time.process_time(), time.perf_counter()
    metas = []
    for _ in range(args.batches):
        batch = next(it)
        _ = batch["image"].astype(np.float32) * np.float32(1 / 255)  # same output dtype as ours
        metas.append([("x", e) for e in batch["episode_id"].tolist()])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    frames = args.batches * args.batch
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"frames_per_s": frames / wall, "frames_per_s_per_core": frames / cpu, "cpu_s": cpu,
            "rss_mb": peak_mb, "loader_rss_mb": peak_mb - base_mb,
            "distinct_episodes_per_batch": _distinct(metas)}


def bridge_scale_diversity(buffer_gib: float, *, batches: int = 200, batch: int = 32, seed: int = 0) -> float:
    """Distinct episodes per batch of our epoch plan at bridge_orig scale (plan only, no I/O).

    60,064 episodes of 25-46 frames (~2.1M frames, like bridge_orig), ~20 KB per encoded frame, the
    shuffle window our stream derives from ``buffer_gib`` (world size 1), 4 shards of 15,016 episodes.
    """
    from pipeline.data.stream.plan import DatasetLayout, pass_order

    rng = np.random.default_rng(seed)
    lengths = rng.integers(25, 47, size=60_064)
    layout = DatasetLayout(name="bridge_sim", shard_urls=tuple(f"s{i}" for i in range(4)),
                           frames=tuple(np.array_split(lengths, 4)))
    window = max(1, int(1.5 * buffer_gib * 2**30 / (float(lengths.mean()) * 20_000)))
    ep, _ = pass_order(layout, np.random.default_rng(seed + 1), window)
    start = len(ep) // 2  # steady state, mid-pass
    chunk = ep[start:start + batches * batch].reshape(batches, batch)
    return float(np.mean([len(set(row.tolist())) for row in chunk]))


def _run_side(side: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "pipeline.bench.stream", "--side", side, "--data", args.data]
    for key in ("frames", "batches", "warmup", "workers", "batch", "buffer_mb", "reference_buffer"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if side == "reference-goal":
        cmd[cmd.index("reference-goal")] = "reference"
        cmd.append("--reference-goal")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=3000, help="fixture frames (two datasets)")
    p.add_argument("--batches", type=int, default=50, help="measured batches per side")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="our decode processes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--buffer-mb", type=int, default=32, help="our episode cache budget")
    p.add_argument("--reference-buffer", type=int, default=1000, help="reference shuffle buffer (frames)")
    p.add_argument("--reference-goal", action="store_true", help="reference side: add goal relabeling")
    p.add_argument("--no-goal-run", action="store_true", help="skip the reference run with goal relabeling")
    p.add_argument("--side", choices=["ours", "reference"], default=None)
    p.add_argument("--data", default=None)
    return p


DATASETS = ["bridge_orig", "fractal20220817_data"]


def main(argv: list[str] | None = None) -> int:
    import pipeline  # noqa: F401  (env defaults)

    args = _parser().parse_args(argv)
    if args.side is not None:
        side = _side_ours if args.side == "ours" else _side_reference
        print(json.dumps(side(args, DATASETS)))
        return 0
    from pipeline.data.fixtures.curated import write_curated_dataset

    tmp = tempfile.mkdtemp(prefix="bench-stream-")
    try:
        args.data = tmp
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for i, name in enumerate(DATASETS):
            share = args.frames * (0.6 if i == 0 else 0.4)
            lengths = rng.integers(25, 50, size=max(1, int(share / 37))).tolist()
            write_curated_dataset(tmp, name, episode_lengths=lengths, shards=4, seed=i)
        gen_s = time.perf_counter() - t0
        ours, ref = _run_side("ours", args), _run_side("reference", args)
        goal = None if args.no_goal_run else _run_side("reference-goal", args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "bench": "stream", "image": "256x256 jpeg -> 224", "batch_size": args.batch, "measured_frames": args.batches * args.batch,
        "workers": args.workers, "buffer_mb": args.buffer_mb, "reference_shuffle_buffer_frames": args.reference_buffer,
        "frames_per_s": ours["frames_per_s"], "reference_frames_per_s": ref["frames_per_s"],
        "frames_per_s_per_worker": ours["frames_per_s"] / max(1, args.workers),
        "frames_per_s_per_core": ours["frames_per_s_per_core"],
        "reference_frames_per_s_per_core": ref["frames_per_s_per_core"],
        "speedup_per_core": ours["frames_per_s_per_core"] / ref["frames_per_s_per_core"],
        "speedup_wall": ours["frames_per_s"] / ref["frames_per_s"],
        "cores_used": ours["cpu_s"] * ours["frames_per_s"] / (args.batches * args.batch),
        "reference_cores_used": ref["cpu_s"] * ref["frames_per_s"] / (args.batches * args.batch),
        "rss_mb": ours["rss_mb"], "reference_rss_mb": ref["rss_mb"], "rss_ratio": ours["rss_mb"] / ref["rss_mb"],
        "loader_rss_mb": ours["loader_rss_mb"], "reference_loader_rss_mb": ref["loader_rss_mb"],
        "cache_peak_mb": ours["cache_peak_mb"],
        "distinct_episodes_per_batch": ours["distinct_episodes_per_batch"],
        "reference_distinct_episodes_per_batch": ref["distinct_episodes_per_batch"],
        "fixture_gen_s": gen_s,
    }
    # OpenVLA: 256k-frame buffer, ~100 GB per rank in practice, ~30.3 distinct per 32 at best (ANCHORS.md)
    result["bridge_scale_distinct_episodes_per_batch"] = {
        f"{gib}GiB": round(bridge_scale_diversity(gib), 2) for gib in (0.25, 1, 4)}
    if goal is not None:  # the loader as OpenVLA ships it: every frame also decodes + resizes a goal image
        result["reference_goal_frames_per_s_per_core"] = goal["frames_per_s_per_core"]
        result["speedup_per_core_vs_goal_relabeling"] = ours["frames_per_s_per_core"] / goal["frames_per_s_per_core"]
        result["reference_goal_loader_rss_mb"] = goal["loader_rss_mb"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
