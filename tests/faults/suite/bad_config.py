"""Scenario ``bad_config``: a table of bad inputs through the real ``vla`` CLI.

Every case of ``CASES`` must end with exit status 2, exactly one stderr line that starts with
``error:`` and names the problem (``Case.expect`` is a substring of it), no ``Traceback``, and
nothing written: the case runs with its working directory in a sandbox (which also holds every
path the case names: run dirs, outputs, config and mixture files) and the sandbox's file tree is
the same before and after. Full mode runs every case as a subprocess (``python -m pipeline.cli``);
quick mode runs them in-process (``pipeline.cli.main`` with stderr captured) and the cases marked
``subprocess`` as subprocesses too. ``train`` cases carry ``stop.max_steps=1`` so that a check that
is missing shows up as a (short) training run that writes files, not as a hang.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from tests.faults.suite.core import REPO_ROOT, FaultContext, ScenarioResult
from tests.support.net import free_port

__all__ = ["Case", "CASES", "prepare_sandbox", "run_case", "run"]

SAFE = ("stop.max_steps=1", "metrics.progress=false")  # train: a missed check trains 1 step, not 1000
SYN = ("data.source=synthetic",)


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]  # "{sb}" = the sandbox directory, "{port}" = a closed TCP port
    expect: str  # substring of the one error line
    env: tuple[tuple[str, str], ...] = ()
    subprocess: bool = False  # also run as a subprocess in quick mode


def _train(*args: str, synthetic: bool = True) -> tuple[str, ...]:
    return ("train", "run_dir={sb}/run", *(SYN if synthetic else ()), *SAFE, *args)


CASES: tuple[Case, ...] = (
    Case("malformed_yaml_config", ("train", "--config", "{sb}/bad.yaml"), "malformed YAML", subprocess=True),
    Case("config_file_unknown_key", ("train", "--config", "{sb}/unknown_key.yaml"), "unknown config key 'optim.lrr'"),
    Case("config_file_missing", ("train", "--config", "{sb}/nope.yaml"), "config file {sb}/nope.yaml not found"),
    Case("malformed_mixture_yaml", ("curate", "mixture={sb}/mix_malformed.yaml", "source={sb}/raw", "out={sb}/out"),
         "malformed mixture YAML", subprocess=True),
    Case("unknown_mixture_dataset", ("curate", "mixture={sb}/mix_unknown_ds.yaml", "source={sb}/raw", "out={sb}/out"),
         "datasets.bridge_orgi"),
    Case("negative_weight", ("curate", "mixture={sb}/mix_negative.yaml", "source={sb}/raw", "out={sb}/out"),
         "weight must be >= 0"),
    Case("zero_total_weight", ("curate", "mixture={sb}/mix_zero.yaml", "source={sb}/raw", "out={sb}/out"),
         "all weights are zero"),
    Case("mixture_unknown_top_key", ("curate", "mixture={sb}/mix_unknown_key.yaml", "source={sb}/raw", "out={sb}/out"),
         "weights: unknown key"),
    Case("unknown_mixture_name", ("curate", "mixture=no_such_mixture", "source={sb}/raw", "out={sb}/out"),
         "mixture 'no_such_mixture' not found"),
    Case("train_mixture_not_found", _train("data.data_root={sb}/curated_empty", "data.mixture=no_such_mixture",
                                           synthetic=False), "mixture 'no_such_mixture' not found"),
    Case("unknown_config_key", _train("optim.lrr=0.1"), "unknown config key 'optim.lrr'"),
    Case("wrong_type_int", _train("per_device_batch=abc"), "per_device_batch", subprocess=True),
    Case("wrong_type_bool", ("curate", "mixture=demo", "source={sb}/raw", "out={sb}/out", "progress=maybe"), "progress"),
    Case("unreachable_storage", _train("checkpoint.dir=gs://test-bucket/ckpt"), "storage not reachable",
         env=(("STORAGE_EMULATOR_HOST", "http://127.0.0.1:{port}"),), subprocess=True),
    Case("bad_storage_scheme", _train("data.data_root=nosuch://bucket/curated", synthetic=False),
         "unsupported storage scheme 'nosuch://'"),
    Case("run_dir_under_a_file", ("train", "run_dir={sb}/a_file/run", *SYN, *SAFE), "({sb}/a_file is a file)",
         subprocess=True),
    Case("curate_out_under_a_file", ("curate", "mixture=demo", "source={sb}/raw", "out={sb}/a_file/out"),
         "out={sb}/a_file/out"),
    Case("world_size_does_not_divide_batch", _train("nproc=2", "per_device_batch=4", "global_batch=12"),
         "not divisible by world size 2"),
    Case("nonexistent_data_dir", _train("data.data_root={sb}/no_such_dir", synthetic=False), "curated data not found"),
    Case("curate_source_missing", ("curate", "mixture=demo", "source={sb}/no_such_raw", "out={sb}/out"),
         "source data of dataset 'bridge_orig' not found"),
    Case("mixture_not_curated", _train("data.data_root={sb}/curated_empty", synthetic=False), "datasets not curated"),
    Case("nproc_zero", _train("nproc=0"), "nproc=0"),
    Case("per_device_batch_zero", _train("per_device_batch=0"), "per_device_batch=0"),
    Case("unknown_verb", ("trian", "run_dir={sb}/run"), "unknown verb 'trian'", subprocess=True),
    Case("missing_required_key", ("curate", "mixture=demo", "out={sb}/out"), "missing required config value 'source'"),
    Case("resume_not_a_checkpoint", _train("resume={sb}/no_such_ckpt"), "not a committed checkpoint"),
    Case("resume_bad_scheme", _train("resume=nosuch://ckpt/step_000001"), "resume=nosuch://ckpt/step_000001"),
    Case("bad_enum", _train("fsdp.mode=bogus"), "fsdp.mode='bogus'"),
    Case("bad_camera_slot", _train("data.stream.cameras=[top]"), "cameras"),
    Case("stream_values_at_parse_time", _train("data.stream.buffer_bytes=10", "data.stream.prefetch_batches=0"),
         "data.stream.buffer_bytes=10: must be >= 1 MiB"),
    Case("moved_key", _train("data.num_workers=2"), "unknown config key 'data.num_workers' (now data.stream.num_workers)"),
    Case("max_steps_zero", ("train", "run_dir={sb}/run", *SYN, "stop.max_steps=0"), "stop.max_steps=0"),
    Case("not_key_value", _train("per_device_batch"), "unexpected argument 'per_device_batch'"),
    Case("config_flag_without_file", ("train", "--config"), "--config needs a file name"),
    Case("fixture_zero_episodes", ("fixture", "out={sb}/fx", "datasets=[bridge_orig]", "episodes=0"), "episodes=0"),
    Case("negative_num_shards", ("curate", "mixture=demo", "source={sb}/raw", "out={sb}/out", "num_shards=-1"),
         "num_shards"),
    Case("export_missing_checkpoint", ("export", "checkpoint={sb}/no_such_ckpt", "out={sb}/export"),
         "no committed checkpoint"),
)

_FILES = {
    "bad.yaml": "optim:\n  lr: [0.1,\nseed: 1\n",
    "unknown_key.yaml": "optim:\n  lrr: 0.1\n",
    "mix_malformed.yaml": "name: m\ndatasets:\n  bridge_orig: 1.0\n   taco_play: [\n",
    "mix_unknown_ds.yaml": "name: m\ndatasets:\n  bridge_orgi: 1.0\n",
    "mix_negative.yaml": "name: m\ndatasets:\n  bridge_orig: 1.0\n  taco_play: -0.5\n",
    "mix_zero.yaml": "name: m\ndatasets:\n  bridge_orig: 0\n  taco_play: 0.0\n",
    "mix_unknown_key.yaml": "name: m\nweights:\n  bridge_orig: 1.0\n",
    "a_file": "a regular file: paths below it cannot be created\n",
}


def prepare_sandbox(sandbox: str) -> None:
    """The inputs the cases name (bad YAML files, a regular file, an empty curated root)."""
    os.makedirs(os.path.join(sandbox, "curated_empty"), exist_ok=True)
    for name, text in _FILES.items():
        with open(os.path.join(sandbox, name), "w") as f:
            f.write(text)


def _tree(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, fnames in os.walk(root):
        for name in fnames + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_size if name in fnames else -1, st.st_mtime_ns)
    return out


def _fill(text: str, sandbox: str, port: int) -> str:
    return text.replace("{sb}", sandbox).replace("{port}", str(port))


def _in_process(args: list[str], env: dict[str, str], sandbox: str) -> tuple[object, str]:
    from pipeline.cli import main

    saved = {k: os.environ.get(k) for k in env}
    cwd = os.getcwd()
    err, out = io.StringIO(), io.StringIO()
    os.environ.update(env)
    os.chdir(sandbox)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            try:
                code: object = main(args)
            except SystemExit as e:
                code = e.code
            except BaseException:  # noqa: BLE001 - a crash is what this scenario looks for
                code = "crash"
                traceback.print_exc(file=err)
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, err.getvalue()


def _subprocess(args: list[str], env: dict[str, str], sandbox: str, timeout: float = 120.0) -> tuple[object, str]:
    full_env = {**os.environ, **env,
                "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))}
    try:
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=sandbox, env=full_env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return "timeout", (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else str(e.stderr or "")
    return p.returncode, p.stderr


def run_case(case: Case, sandbox: str, *, in_subprocess: bool, port: int | None = None) -> list[str]:
    """Run one case; returns the failed checks (empty = the case behaves)."""
    port = port or free_port()
    args = [_fill(a, sandbox, port) for a in case.args]
    env = {k: _fill(v, sandbox, port) for k, v in case.env}
    before = _tree(sandbox)
    code, stderr = (_subprocess if in_subprocess else _in_process)(args, env, sandbox)
    after = _tree(sandbox)
    lines = [x for x in stderr.splitlines() if x.strip()]
    how = "subprocess" if in_subprocess else "in-process"
    problems = []
    if code != 2:
        problems.append(f"exit status {code}, expected 2")
    if "Traceback" in stderr:
        problems.append("stderr has a Traceback")
    if len(lines) != 1 or not lines[0].startswith("error:"):
        problems.append(f"stderr has {len(lines)} line(s), expected one 'error:' line: {lines[:3]}")
    elif _fill(case.expect, sandbox, port) not in lines[0]:
        problems.append(f"error line does not name {_fill(case.expect, sandbox, port)!r}: {lines[0]}")
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        problems.append(f"files written or changed: {changed[:5]}")
    return [f"{case.name} ({how}): {p}" for p in problems]


def run(ctx: FaultContext) -> ScenarioResult:
    result = ScenarioResult(scenario="bad_config")
    sandbox = os.path.realpath(ctx.path("sandbox", ".keep").rsplit("/", 1)[0])
    prepare_sandbox(sandbox)
    port = free_port()  # nothing listens there
    counts = {"in_process": 0, "subprocess": 0}
    slowest = (0.0, "")
    for case in CASES:
        modes = [True] if not ctx.quick else ([False, True] if case.subprocess else [False])
        failures = []
        for in_subprocess in modes:
            t0 = time.time()
            failures += run_case(case, sandbox, in_subprocess=in_subprocess, port=port)
            slowest = max(slowest, (time.time() - t0, case.name))
            counts["subprocess" if in_subprocess else "in_process"] += 1
        ctx.log(f"{case.name}: {'ok' if not failures else failures[0]}")
        result.trial(not failures, "; ".join(failures))
    result.details.update(cases=len(CASES), runs=counts, slowest_case=f"{slowest[1]} {slowest[0]:.1f}s")
    return result
