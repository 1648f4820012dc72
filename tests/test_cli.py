"""The `vla` command line is an API: every verb, what it runs and its top-level config keys are pinned.

Adding, renaming or removing a verb or a top-level key is an API change: update this table on purpose
(and the README). Config keys one level down are pinned by each verb's own tests.
"""

from __future__ import annotations

import pytest

from pipeline.cli import VERBS, main
from pipeline.config import flat_keys, import_object

_TRAIN_KEYS = ["checkpoint", "data", "debug", "deterministic", "device", "eval", "fsdp", "global_batch", "metrics", "model",
               "nproc", "optim", "per_device_batch", "resume", "run_dir", "seed", "stop"]
_LAUNCH_KEYS = ["backend", "doctor", "dry_run", "gpus_per_node", "job_name", "kuberay", "nodes", "ray", "slurm",
                "torchrun", "train"]

# verb -> (config class, run function, positional keys, sorted top-level config keys)
PINNED = {
    "fixture": ("pipeline.data.fixtures.datasets:FixtureConfig", "pipeline.data.fixtures.datasets:run_fixture", (),
                ["datasets", "episodes", "image_size", "out", "seed", "shards", "steps"]),
    "inspect": ("pipeline.data.oxe.inspect:InspectConfig", "pipeline.data.oxe.inspect:run_inspect", (),
                ["data", "datasets", "max_episodes"]),
    "curate": ("pipeline.data.curate.job:CurateConfig", "pipeline.data.curate.job:run_curate", (),
               ["filters", "fix_known_issues", "keep_parts", "max_examples", "mixture", "num_shards", "out", "progress",
                "ray", "seed", "sketch_k", "source", "split", "workers"]),
    "mixture show": ("pipeline.data.mixture.report:MixtureShowConfig", "pipeline.data.mixture.report:run_show",
                     ("name",), ["curated", "global_batch", "json", "name", "plot", "steps"]),
    "mixture diff": ("pipeline.data.mixture.report:MixtureDiffConfig", "pipeline.data.mixture.report:run_diff",
                     ("a", "b"), ["a", "b", "curated", "json"]),
    "dataset register": ("pipeline.data.oxe.dataset_cli:RegisterConfig", "pipeline.data.oxe.dataset_cli:run_register", (),
                         ["action", "action_encoding", "cameras", "check_episodes", "control_hz", "description",
                          "episode_filters", "episode_id_key", "force", "language_key", "name", "out", "src",
                          "state_encoding", "state_keys"]),
    "dataset list": ("pipeline.data.oxe.dataset_cli:ListConfig", "pipeline.data.oxe.dataset_cli:run_list", (),
                     ["blocks", "user_only"]),
    "dataset show": ("pipeline.data.oxe.dataset_cli:ShowConfig", "pipeline.data.oxe.dataset_cli:run_show", ("name",),
                     ["name"]),
    "launch": ("launch.config:LaunchConfig", "launch.cli:run_launch", (), _LAUNCH_KEYS),
    "doctor": ("launch.config:LaunchConfig", "launch.doctor:run_doctor", ("--config",), _LAUNCH_KEYS),
    "train": ("pipeline.train.config:TrainConfig", "pipeline.train.main:run_train", (), _TRAIN_KEYS),
    "finetune": ("pipeline.train.finetune:FinetuneConfig", "pipeline.train.finetune:run_finetune", (),
                 sorted([*_TRAIN_KEYS, "base", "export_dir", "lora"])),
    "export": ("pipeline.train.export:ExportConfig", "pipeline.train.export:run_export", (),
               ["adapter", "checkpoint", "dtype", "format", "max_shard_size", "out", "overwrite"]),
    "plot": ("pipeline.train.plot:PlotConfig", "pipeline.train.plot:run_plot", (), ["out", "run_dir"]),
    "serve": ("pipeline.serve:ServeConfig", "pipeline.serve:run_serve", (),
              ["center_crop", "checkpoint", "device", "host", "max_body_mb", "port", "quantization"]),
}


def test_every_verb_is_pinned():
    assert sorted(VERBS) == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_verb_and_top_level_keys(name):
    config, run, positional, keys = PINNED[name]
    verb = VERBS[name]
    assert (verb.config, verb.run, verb.positional) == (config, run, positional)
    assert callable(import_object(verb.run))
    assert sorted({k.split(".")[0] for k, *_ in flat_keys(import_object(verb.config))}) == keys


@pytest.mark.parametrize("name", sorted(PINNED))
def test_help_lists_the_keys(name, capsys):
    assert main([*name.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vla {name} ") and all(f"  {key}" in out for key in PINNED[name][3])
