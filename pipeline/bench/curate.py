"""``make bench-curate``: curation throughput with 1 and 2 Ray workers, and statistics throughput.

Generates fixture data (the demo mixture's datasets) into a temp dir, starts one local Ray session
with 2 CPUs, curates the mixture twice (``workers=1`` then ``workers=2``, fresh output each time)
and prints ONE JSON line::

    {"frames_per_s_1_worker": ..., "frames_per_s_2_workers": ..., "scaling": ..., "stats_frames_per_s": ...,
     "frames": ..., "episodes_per_dataset": ..., "datasets": [...]}

``scaling`` = 2-worker / 1-worker throughput (ideal 2.0 on a machine with 2 free cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import pipeline  # noqa: F401  (env defaults)
from pipeline.config import load_config

__all__ = ["main", "bench_stats"]

EPISODES = int(os.environ.get("BENCH_CURATE_EPISODES", "24"))
SHARDS = 4


def _fixtures(root: str, datasets: list[str]) -> None:
    from pipeline.data.fixtures.datasets import FixtureConfig, run_fixture

    cfg = load_config(FixtureConfig, [f"out={root}", f"datasets=[{','.join(datasets)}]", f"episodes={EPISODES}",
                                      f"shards={SHARDS}", "steps=20-40", "seed=0"])
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        run_fixture(cfg)


def _curate_once(source: str, out: str, workers: int) -> tuple[int, float]:
    from pipeline.data.curate.job import CurateConfig, curate

    cfg = load_config(CurateConfig, ["mixture=demo", f"source={source}", f"out={out}", f"workers={workers}",
                                     "progress=false"])
    start = time.perf_counter()
    results = curate(cfg)
    took = time.perf_counter() - start
    return sum(r["manifest"]["total_frames"] for r in results), took


def bench_stats(frames: int = 400_000) -> float:
    """Frames/s of PartialStats.update over 40-step episodes (action 7 + proprio 8 dims)."""
    from pipeline.data.curate.stats import PartialStats

    rng = np.random.default_rng(0)
    action = rng.standard_normal((frames, 7)).astype(np.float32)
    proprio = rng.standard_normal((frames, 8)).astype(np.float32)
    stats = PartialStats()
    start = time.perf_counter()
    for i in range(0, frames, 40):
        stats.update(action[i:i + 40], proprio[i:i + 40])
    stats.finalize()
    return frames / (time.perf_counter() - start)


def main() -> int:
    import ray

    from pipeline.data.mixture.files import load_mixture

    datasets = list(load_mixture("demo").active())
    root = tempfile.mkdtemp(prefix="bench-curate-")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        source = os.path.join(root, "raw")
        _fixtures(source, datasets)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
        _curate_once(source, os.path.join(root, "warmup"), 2)  # worker start-up, imports
        f1, t1 = _curate_once(source, os.path.join(root, "w1"), 1)
        f2, t2 = _curate_once(source, os.path.join(root, "w2"), 2)
        ray.shutdown()
        r1, r2 = f1 / t1, f2 / t2
        out = {"frames_per_s_1_worker": round(r1, 1), "frames_per_s_2_workers": round(r2, 1),
               "scaling": round(r2 / r1, 3), "stats_frames_per_s": round(bench_stats(), 1), "frames": f1,
               "episodes_per_dataset": EPISODES, "datasets": datasets, "cpus": os.cpu_count()}
        print(json.dumps(out))
        return 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
