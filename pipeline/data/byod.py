"""A made-up robot dataset end to end, from one call: raw RLDS data of ``acme_arm_demo`` (the example
entry in ``dataset_mixtures/registry/``) plus its curated copy.

    from pipeline.data.byod import make_demo_robot_dataset
    paths = make_demo_robot_dataset("/tmp/acme", episodes=16, seed=0)
    paths["curated"]   # curated root: <root>/acme_arm_demo/1.0.0/ (+ dataset_statistics.json)
    paths["mixture"]   # a one-dataset mixture YAML usable as `mixture=` (train, finetune)

The raw data comes from the fixture generator (reach-and-pick scenes), written in the robot's own
conventions (cameras ``cam_front``/``cam_hand``, rotation-vector action, relative gripper), so the
curated copy exercises the registry entry's standardization. Curation runs ``vla curate`` (Ray: a
running session is reused, else a local one is started and stopped).
"""

from __future__ import annotations

from pipeline import fs

__all__ = ["DEMO_ROBOT", "make_demo_robot_dataset"]

DEMO_ROBOT = "acme_arm_demo"


def make_demo_robot_dataset(out_dir: str, *, episodes: int = 16, seed: int = 0, steps: str = "8-14",
                            image_size: int = 64, shards: int = 2, curate: bool = True, ray_address: str = "",
                            num_cpus: int = 2) -> dict:
    """Write ``<out_dir>/raw/acme_arm_demo/1.0.0`` and (``curate``) ``<out_dir>/curated/acme_arm_demo/1.0.0``.

    Returns ``{"dataset", "raw", "raw_dir", "mixture", "curated", "curated_dir", "episodes"}``
    (roots are what ``source=`` / ``data_root`` take; ``*_dir`` are the builder directories;
    curated keys are "" when ``curate`` is false). Same arguments -> identical data.
    """
    from pipeline.data.fixtures import parse_steps, write_fixture_dataset
    from pipeline.data.oxe import get_spec

    spec = get_spec(DEMO_ROBOT)
    raw_root = fs.join(out_dir, "raw")
    written = write_fixture_dataset(spec, raw_root, episodes=episodes, steps=parse_steps(steps), shards=shards,
                                    seed=seed, image_size=image_size)
    mixture = fs.join(out_dir, f"{DEMO_ROBOT}_mixture.yaml")
    fs.write_text(mixture, f"name: {DEMO_ROBOT}\ndescription: the made-up ACME arm (vla dataset register example)\n"
                           f"balance_by_size: true\ndatasets:\n  {DEMO_ROBOT}: 1.0\n")
    out = {"dataset": DEMO_ROBOT, "raw": raw_root, "raw_dir": written["dir"], "mixture": mixture,
           "curated": "", "curated_dir": "", "episodes": written["episodes"]}
    if curate:
        from pipeline.config import load_config
        from pipeline.data.curate import CurateConfig
        from pipeline.data.curate import curate as run
        from pipeline.data.manifest import curated_dir

        curated_root = fs.join(out_dir, "curated")
        cfg = load_config(CurateConfig, [f"mixture={mixture}", f"source={raw_root}", f"out={curated_root}",
                                         f"seed={seed}", "progress=false", f"ray.num_cpus={num_cpus}",
                                         *([f"ray.address={ray_address}"] if ray_address else [])])
        result = run(cfg)[0]
        out.update(curated=curated_root, curated_dir=curated_dir(curated_root, DEMO_ROBOT),
                   curated_episodes=result["manifest"]["total_episodes"])
    return out
