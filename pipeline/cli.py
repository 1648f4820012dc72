"""The ``vla`` command line: one verb per stage, typed configs, ``key=value`` overrides.

    vla <verb> [positional ...] [--config FILE.yaml] [--flag] [--key VALUE] [key=value ...]
    vla <verb> --help

Positional arguments map to the verb's declared positional keys; ``--flag`` sets a boolean key to
true and ``--key VALUE`` is the same as ``key=VALUE``. User mistakes print one ``error:`` line and
exit with status 2; no traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipeline.errors import UserError

__all__ = ["main", "VERBS", "Verb"]


@dataclass(frozen=True)
class Verb:
    config: str  # "module:ConfigClass"
    run: str  # "module:function", called with the config; returns an exit code or None
    help: str
    positional: tuple[str, ...] = ()  # keys filled by bare words in order; "--config": the config file


VERBS: dict[str, Verb] = {
    "fixture": Verb(
        "pipeline.data.fixtures.datasets:FixtureConfig",
        "pipeline.data.fixtures.datasets:run_fixture",
        "write OXE-format fixture datasets (TFDS builder directories)",
    ),
    "inspect": Verb(
        "pipeline.data.oxe.inspect:InspectConfig",
        "pipeline.data.oxe.inspect:run_inspect",
        "read datasets back through the registry and print a per-dataset table",
    ),
    "curate": Verb("pipeline.data.curate.job:CurateConfig", "pipeline.data.curate.job:run_curate", "curate a mixture's raw datasets into shuffled TFDS shards + stats (Ray)"),
    "mixture show": Verb("pipeline.data.mixture.report:MixtureShowConfig", "pipeline.data.mixture.report:run_show", "per-dataset weights, frames, shares and passes of a mixture", ("name",)),
    "mixture diff": Verb("pipeline.data.mixture.report:MixtureDiffConfig", "pipeline.data.mixture.report:run_diff", "what changed in weights and shares between two mixtures", ("a", "b")),
    "dataset register": Verb("pipeline.data.oxe.dataset_cli:RegisterConfig", "pipeline.data.oxe.dataset_cli:run_register", "register your own RLDS dataset (YAML in dataset_mixtures/registry/), validated on its first episode"),
    "dataset list": Verb("pipeline.data.oxe.dataset_cli:ListConfig", "pipeline.data.oxe.dataset_cli:run_list", "built-in and user-registered datasets (blocks=true: action building blocks)"),
    "dataset show": Verb("pipeline.data.oxe.dataset_cli:ShowConfig", "pipeline.data.oxe.dataset_cli:run_show", "the resolved registry entry of one dataset", ("name",)),
    "launch": Verb("launch.config:LaunchConfig", "launch.cli:run_launch", "start training on torchrun | slurm | ray | kuberay from one launch config"),
    "doctor": Verb("launch.config:LaunchConfig", "launch.doctor:run_doctor", "preflight: collective, devices, storage, curated data, disk for a launch config (doctor.* keys)", ("--config",)),
    "train": Verb("pipeline.train.config:TrainConfig", "pipeline.train.main:run_train", "train the VLA with FSDP2 (nproc=N re-launches under torchrun); resumable checkpoints"),
    "finetune": Verb("pipeline.train.finetune:FinetuneConfig", "pipeline.train.finetune:run_finetune", "LoRA fine-tuning (peft) of an export or checkpoint on new data; FSDP2, resumable, merged export"),
    "export": Verb("pipeline.train.export:ExportConfig", "pipeline.train.export:run_export", "a training checkpoint (or model folder) -> bf16 sharded weights + tokenizer + stats + model card, our layout or OpenVLA's (format=openvla)"),
    "plot": Verb("pipeline.train.plot:PlotConfig", "pipeline.train.plot:run_plot", "render loss/accuracy curves of a run's metrics.jsonl to PNG"),
    "serve": Verb("pipeline.serve:ServeConfig", "pipeline.serve:run_serve", "serve an export over HTTP: POST /act (image + instruction -> 7-D action), GET /health"),
}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: vla <verb> [--config FILE.yaml] [key=value ...]", "", "verbs:"]
    lines += [f"  {name:<{width}}  {verb.help}" for name, verb in sorted(VERBS.items())]
    lines += ["", "Run `vla <verb> --help` for the keys of a verb."]
    return "\n".join(lines)


def _find_verb(argv: list[str]) -> tuple[str, list[str]]:
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in VERBS:
            return name, argv[n:]
    raise UserError(f"unknown verb '{argv[0]}' (run `vla --help` for the list)")


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        _print_version()
        return 0
    # omegaconf (through pipeline.config): not needed by --help/--version
    from pipeline.config import config_help, import_object, load_argv

    name, rest = _find_verb(argv)
    verb = VERBS[name]
    cls = import_object(verb.config)
    if any(a in ("-h", "--help") for a in rest):
        pos = " ".join("FILE.yaml" if k == "--config" else k.upper() for k in verb.positional)
        print(f"usage: vla {name} {pos + ' ' if pos else ''}[--config FILE.yaml] [key=value ...]\n")
        print(f"{verb.help}\n\nkeys (with defaults):\n{config_help(cls)}")
        return 0
    cfg = load_argv(cls, rest, positional=verb.positional)
    code = import_object(verb.run)(cfg)
    return int(code or 0)


def _print_version() -> None:
    from pipeline import __version__
    from pipeline.versions import check_versions, version_lines

    checks = check_versions()
    print("\n".join([f"vla-pipeline {__version__}", *version_lines(checks)]))
    for check in checks:
        if check.warning:
            print(f"warning: {check.warning}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from pipeline.secrets import install, redact

    install()  # credentials never reach logs or tracebacks (pipeline/secrets.py)
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except UserError as e:
        print(redact(f"error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
