"""SLURM backend: render an sbatch script, save it under ``<run_dir>/launch/``, submit it.

The script runs one ``torchrun`` per node (``srun --ntasks-per-node=1``) with c10d rendezvous on
the first host of ``scontrol show hostnames``; see ``launch/templates/sbatch.sh`` for the
SIGUSR1 (checkpoint before the time limit) and requeue protocol.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from launch._record import record, record_config
from launch._template import render_file
from launch.config import LaunchConfig
from launch.trainer import TRAIN_MODULE, train_overrides
from pipeline import fs
from pipeline.errors import UserError

__all__ = ["render_sbatch", "log_dir", "grace_seconds", "submit", "run_slurm"]


def _sbatch_lines(cfg: LaunchConfig) -> list[str]:
    s = cfg.slurm
    opts = ["--requeue" if s.requeue else "--no-requeue"]
    if s.use_gpus:
        opts.append(f"--gpus-per-node={cfg.gpus_per_node}")
    if s.cpus_per_task:
        opts.append(f"--cpus-per-task={s.cpus_per_task}")
    if s.mem:
        opts.append(f"--mem={s.mem}")
    if s.partition:
        opts.append(f"--partition={s.partition}")
    if s.account:
        opts.append(f"--account={s.account}")
    opts += [o if o.startswith("-") else f"--{o}" for o in s.extra_sbatch]
    return [f"#SBATCH {o}" for o in opts]


def log_dir(cfg: LaunchConfig) -> str:
    """Where SLURM writes ``<job>-<id>.out``: must be a local or shared POSIX dir."""
    if cfg.slurm.log_dir:
        return os.path.abspath(cfg.slurm.log_dir)
    if fs.is_remote(cfg.train.run_dir):
        return os.path.abspath("slurm-logs")
    return os.path.join(os.path.abspath(cfg.train.run_dir), "launch")


def grace_seconds(cfg: LaunchConfig) -> int:
    """How long the batch shell waits for the trainers after the signal before requeueing anyway."""
    return max(5, cfg.slurm.signal_seconds * 3 // 4)


def _run_dir_for_nodes(cfg: LaunchConfig) -> str:
    return cfg.train.run_dir if fs.is_remote(cfg.train.run_dir) else os.path.abspath(cfg.train.run_dir)


def render_sbatch(cfg: LaunchConfig) -> str:
    """The sbatch script text for ``cfg`` (pure)."""
    args = train_overrides(cfg, run_dir=_run_dir_for_nodes(cfg))
    values = {
        "job_name": cfg.job_name,
        "nodes": cfg.nodes,
        "gpus_per_node": cfg.gpus_per_node,
        "sbatch_lines": "\n".join(_sbatch_lines(cfg)),
        "time": cfg.slurm.time,
        "signal_seconds": cfg.slurm.signal_seconds,
        "grace_seconds": grace_seconds(cfg),
        "log_dir": log_dir(cfg),
        "setup": "\n".join(cfg.slurm.setup),
        "run_dir": shlex.quote(_run_dir_for_nodes(cfg)),
        "requeue": int(cfg.slurm.requeue),
        "port": cfg.slurm.port,
        "python": shlex.quote(cfg.slurm.python),
        "train_module": TRAIN_MODULE,
        "train_args": shlex.join(args),
    }
    return render_file("sbatch.sh", values)


def submit(cfg: LaunchConfig, script: str) -> str:
    """``sbatch --parsable`` with the script on stdin; returns the job id."""
    exe = shutil.which(cfg.slurm.sbatch)
    if exe is None:
        raise UserError(f"slurm.sbatch: '{cfg.slurm.sbatch}' not found on PATH (run on a SLURM login "
                        "node, or use dry_run=true to print the script)")
    os.makedirs(log_dir(cfg), exist_ok=True)
    proc = subprocess.run([exe, "--parsable"], input=script, text=True, capture_output=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"sbatch rejected the job: {msg[-1] if msg else 'exit ' + str(proc.returncode)}")
    return proc.stdout.strip().split(";")[0]


def run_slurm(cfg: LaunchConfig) -> int:
    script = render_sbatch(cfg)
    if cfg.dry_run:
        print(script, end="")
        return 0
    record_config(cfg)
    url = record(cfg.train.run_dir, "sbatch.sh", script)
    job_id = submit(cfg, script)
    record(cfg.train.run_dir, "slurm_job_id", job_id + "\n")
    print(f"submitted SLURM job {job_id} (script {url}, logs {log_dir(cfg)}/{cfg.job_name}-{job_id}.out)")
    return 0
