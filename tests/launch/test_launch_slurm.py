"""SLURM backend: the rendered sbatch script (syntax, options, signal/requeue protocol), submission,
and real jobs on a local single-node SLURM (slurmctld + slurmd) when slurm-wlm is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from launch_helpers import TINY_TRAIN, read_steps

from launch import slurm
from launch.config import LaunchConfig
from pipeline.config import load_config
from pipeline.errors import UserError
from tests.support.net import free_port


def _cfg(tmp_path, *extra: str) -> LaunchConfig:
    return load_config(LaunchConfig, ["backend=slurm", "nodes=4", "gpus_per_node=8", "job_name=vla-test",
                                      f"train.run_dir={tmp_path / 'run'}", "slurm.partition=a100",
                                      "slurm.account=robotics", "train.model.preset=small", *extra])


def _node_task(script: str) -> str:
    return re.search(r"<<'NODE_EOF' \|\| true\n(.*?)\nNODE_EOF\n", script, re.S).group(1)


def test_script_is_valid_bash(tmp_path):
    script = slurm.render_sbatch(_cfg(tmp_path))
    for name, text in (("sbatch.sh", script), ("node_task.sh", _node_task(script))):
        path = tmp_path / name
        path.write_text(text)
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_script_passes_shellcheck(tmp_path):
    path = tmp_path / "sbatch.sh"
    path.write_text(slurm.render_sbatch(_cfg(tmp_path)))
    # SC2016: the node task is single-quoted on purpose (expanded on each node by bash -c)
    proc = subprocess.run(["shellcheck", "-S", "warning", "-e", "SC2016", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_sbatch_options(tmp_path):
    script = slurm.render_sbatch(_cfg(tmp_path, "slurm.time='12:00:00'", "slurm.signal_seconds=300",
                                      "slurm.extra_sbatch=[--exclusive]", "slurm.cpus_per_task=96"))
    opts = re.findall(r"^#SBATCH (.+)$", script, re.M)
    for want in ("--job-name=vla-test", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                 "--time=12:00:00", "--requeue", "--signal=B:USR1@300", "--partition=a100",
                 "--account=robotics", "--exclusive", "--cpus-per-task=96", "--open-mode=append"):
        assert want in opts, want
    # every #SBATCH line comes before the first command
    first_cmd = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_cmd for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH"))


@pytest.mark.parametrize("value", ["12:00:00", "90", "1:2:3:4"])
def test_unquoted_or_ambiguous_time_is_refused(tmp_path, value):
    with pytest.raises(UserError, match="slurm.time"):
        _cfg(tmp_path, f"slurm.time={value}")


def test_day_time_format(tmp_path):
    assert "#SBATCH --time=2-00:00:00" in slurm.render_sbatch(_cfg(tmp_path, "slurm.time=2-00:00:00"))


def test_no_gpus_and_no_requeue(tmp_path):
    script = slurm.render_sbatch(_cfg(tmp_path, "slurm.use_gpus=false", "slurm.requeue=false"))
    assert "--gpus-per-node" not in script and "#SBATCH --no-requeue" in script
    assert "REQUEUE_ON_SIGNAL=0" in script


def test_rendezvous_signal_and_requeue_protocol(tmp_path):
    script = slurm.render_sbatch(_cfg(tmp_path))
    task = _node_task(script)
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
    assert 'RDZV_ENDPOINT="$HEAD_NODE:29500"' in script
    assert re.search(r"srun .*--ntasks-per-node=1 .*bash -c \"\$NODE_TASK\"", script)
    assert "--rdzv-backend c10d" in task and '--rdzv-endpoint "$RDZV_ENDPOINT"' in task
    assert '--nnodes "$SLURM_NNODES"' in task and '--rdzv-id "$SLURM_JOB_ID"' in task
    assert f"-m pipeline.train.main run_dir={tmp_path / 'run'} resume=auto model.preset=small" in task
    assert "trap 'on_signal SIGUSR1' USR1" in script and "trap 'on_signal SIGTERM' TERM" in script
    assert 'kill -USR1 "$SRUN_PID"' in script  # batch shell -> srun -> every node's task
    assert 'pkill -USR1 -P "$TORCHRUN_PID"' in task  # node task -> the trainer processes
    assert task.startswith("trap '' USR1\n")  # torchrun starts with SIGUSR1 ignored
    assert "after the signal (no SIGUSR1 handler?)" in script  # bounded wait, then requeue anyway
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script


def test_submit_writes_script_and_job_id(tmp_path, capsys):
    fake = tmp_path / "sbatch"
    seen = tmp_path / "seen.sh"
    fake.write_text(f"#!/bin/bash\n[[ $1 == --parsable ]] || exit 3\ncat > {seen}\necho '4242;cluster'\n")
    fake.chmod(0o755)
    cfg = _cfg(tmp_path, f"slurm.sbatch={fake}")
    assert slurm.run_slurm(cfg) == 0
    launch_dir = tmp_path / "run" / "launch"
    assert (launch_dir / "sbatch.sh").read_text() == seen.read_text() == slurm.render_sbatch(cfg)
    assert (launch_dir / "slurm_job_id").read_text().strip() == "4242"
    assert (launch_dir / "launch.yaml").exists()
    assert "submitted SLURM job 4242" in capsys.readouterr().out


def test_missing_sbatch_is_user_error(tmp_path):
    with pytest.raises(UserError, match="slurm.sbatch"):
        slurm.run_slurm(_cfg(tmp_path, "slurm.sbatch=/nonexistent/sbatch"))


def test_dry_run_prints_script(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["launch", "backend=slurm", f"train.run_dir={tmp_path / 'run'}", "dry_run=true"]) == 0
    assert capsys.readouterr().out.startswith("#!/bin/bash")
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------- real local SLURM
def _local_cfg(tmp_path, train: list[str], *extra: str, nodes: int = 1) -> LaunchConfig:
    return load_config(LaunchConfig, [
        "backend=slurm", f"nodes={nodes}", "gpus_per_node=1", "job_name=vla-local",
        f"train.run_dir={tmp_path / 'run'}", "slurm.use_gpus=false", "slurm.time='00:10:00'",
        f"slurm.python={sys.executable}", "slurm.port=" + str(free_port()), *[f"train.{t}" for t in train], *extra])


def _submit(cluster, cfg, monkeypatch) -> str:
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    assert slurm.run_slurm(cfg) == 0
    with open(os.path.join(cfg.train.run_dir, "launch", "slurm_job_id")) as f:
        return f.read().strip()


@pytest.mark.slow
def test_real_slurm_job_signalled_requeued_and_resumed(tmp_path, slurm_cluster, monkeypatch):
    """The real trainer under sbatch -> srun -> one torchrun per node (2 slurmd nodes on this machine
    when possible, c10d on the first host, HSDP mesh). SIGUSR1 to the batch shell mid-run (what
    --signal=B:USR1@N does before the time limit) stops the trainers, the script requeues the job,
    and the second run resumes from the latest committed checkpoint: steps 1..N, none repeated."""
    nodes = len(slurm_cluster.nodes)
    cfg = _local_cfg(tmp_path, TINY_TRAIN + ["stop.max_steps=60", "checkpoint.save_every=3", "fsdp.mode=hybrid"],
                     "slurm.signal_seconds=6", nodes=nodes)
    job = _submit(slurm_cluster, cfg, monkeypatch)
    run = tmp_path / "run"
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or len(read_steps(str(run))) < 4:
        assert time.time() < deadline, slurm_cluster.job_state(job)
        time.sleep(0.3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=dict(os.environ, **slurm_cluster.env),
                   check=True)
    state = slurm_cluster.wait(job, timeout=150)
    log = (run / "launch" / f"vla-local-{job}.out").read_text()
    assert state == "COMPLETED", log[-3000:]
    assert slurm_cluster.job_field(job, "Restarts") == "1"
    assert "requeueing job" in log and re.search(rf"{nodes} node\(s\), rendezvous \S+:\d+", log), log[-3000:]
    assert f"world={nodes} mesh=({nodes}, 1)" in log  # replicate across nodes, shard within
    resumed = re.search(r"resumed from \S+/step_(\d+)", log)
    assert resumed and 3 <= int(resumed.group(1)) < 60, log[-3000:]  # stopped mid-run, resumed mid-run
    assert [r["step"] for r in read_steps(str(run))] == list(range(1, 61))
    assert (run / "checkpoints" / "step_000060" / "COMMIT").exists()


_STUB = '''
import os, signal, sys, time
run_dir = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("run_dir="))
os.makedirs(run_dir, exist_ok=True)
def event(text):
    with open(os.path.join(run_dir, "events"), "a") as f:
        f.write(text + "\\n")
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
event(f"start {restart}")
if restart:
    event("resumed")
    sys.exit(0)
stop = []
def on_usr1(signum, frame):  # may run twice: slurmstepd and the node task both deliver it
    stop.append(signum)
signal.signal(signal.SIGUSR1, on_usr1)
open(os.path.join(run_dir, "ready"), "w").close()
deadline = time.time() + 120
while not stop and time.time() < deadline:
    time.sleep(0.1)
event("usr1: checkpoint and exit" if stop else "never signalled")
sys.exit(0 if stop else 1)
'''


@pytest.mark.slow
def test_real_slurm_usr1_reaches_trainer_then_job_requeues(tmp_path, slurm_cluster, monkeypatch):
    """SIGUSR1 to the batch shell (what --signal=B:USR1@N does before the time limit) reaches the
    trainer process through srun and the node task; the script then requeues the job and the
    second run starts with SLURM_RESTART_COUNT=1 (the trainer would resume from its checkpoint)."""
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    (stub_dir / "usr1_stub.py").write_text(_STUB)
    monkeypatch.setattr(slurm, "TRAIN_MODULE", "usr1_stub")
    cfg = _local_cfg(tmp_path, ["model.preset=tiny"], f"slurm.setup=['export PYTHONPATH={stub_dir}']")
    job = _submit(slurm_cluster, cfg, monkeypatch)
    run = tmp_path / "run"
    deadline = time.time() + 90
    while not (run / "ready").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert (run / "ready").exists(), slurm_cluster.job_state(job)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=dict(os.environ, **slurm_cluster.env),
                   check=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        events = (run / "events").read_text().splitlines() if (run / "events").exists() else []
        if "resumed" in events and slurm_cluster.job_state(job) == "COMPLETED":
            break
        time.sleep(1)
    log = (run / "launch" / f"vla-local-{job}.out").read_text()
    assert events == ["start 0", "usr1: checkpoint and exit", "start 1", "resumed"], log[-3000:]
    assert "requeueing job" in log
    assert slurm_cluster.job_field(job, "Restarts") == "1"
