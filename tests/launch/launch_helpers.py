"""Helpers for launch tests: a tiny synthetic training config, `vla` in a subprocess, local SLURM."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from tests.support.net import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A few steps of the tiny preset on synthetic data; checkpoints at steps 2 and 4 (and on stop).
TINY_TRAIN = [
    "model.preset=tiny",
    "data.source=synthetic",
    "per_device_batch=2",
    "stop.max_steps=5",
    "checkpoint.save_every=2",
    "metrics.tensorboard=false",
]


def train_list(extra: list[str] | None = None) -> list[str]:
    """``train.<key>=<value>`` overrides for ``vla launch``."""
    return [f"train.{t}" for t in TINY_TRAIN + (extra or [])]


def vla(args: list[str], *, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``vla ...`` in a subprocess from the repo root."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_steps(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------ slurm
_SLURM_CONF = """\
ClusterName=vlatest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SwitchType=switch/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
StateSaveLocation={d}/state
SlurmctldPidFile={d}/slurmctld.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmUser=root
ReturnToService=2
MinJobAge=300
# a requeued job is eligible again after cred_expire s (default 120) and starts at the next pass
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=2
SlurmdSpoolDir={d}/spool-%n
SlurmdPidFile={d}/slurmd-%n.pid
SlurmdLogFile={d}/slurmd-%n.log
{node_lines}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


def _node_names() -> list[str]:
    """Two node names that resolve to this machine (hostname + localhost) when possible."""
    names = [socket.gethostname()]
    if names[0] != "localhost":
        names.append("localhost")
    ok = []
    for name in names:
        try:
            if socket.gethostbyname(name).startswith("127."):
                ok.append(name)
        except OSError:
            pass
    return ok or ["localhost"]


class SlurmCluster:
    """slurmctld + one slurmd per node name, all on 127.0.0.1 (private SLURM_CONF, auth/none).

    Two names resolving to 127.0.0.1 give a 2-node cluster on one machine: `scontrol show
    hostnames` and c10d rendezvous on the first node then work like on a real cluster.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="slurm-")
        os.makedirs(os.path.join(self.dir, "state"))
        self.nodes = _node_names()
        cpus = max(1, (os.cpu_count() or 2) // len(self.nodes))
        lines = [f"NodeName={n} NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus} RealMemory=4000 State=UNKNOWN"
                 for n in self.nodes]
        self.conf = os.path.join(self.dir, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(_SLURM_CONF.format(host=self.nodes[0], ctld_port=free_port(), d=self.dir,
                                       node_lines="\n".join(lines), node_names=",".join(self.nodes)))
        self.env = {"SLURM_CONF": self.conf}
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        env = dict(os.environ, **self.env)
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", self.conf], env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name in self.nodes:
            self.procs.append(subprocess.Popen(["slurmd", "-D", "-N", name, "-f", self.conf], env=env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True)
            states = out.stdout.split()
            if out.returncode == 0 and len(states) == len(self.nodes) and set(states) <= {"idle", "mix", "alloc"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"local SLURM did not come up (see {self.dir}/*.log)")

    def job_state(self, job_id: str) -> str:
        out = subprocess.run(["scontrol", "show", "job", job_id], env=dict(os.environ, **self.env),
                             capture_output=True, text=True)
        for token in out.stdout.split():
            if token.startswith("JobState="):
                return token.split("=", 1)[1]
        return "UNKNOWN"

    def job_field(self, job_id: str, field: str) -> str:
        out = subprocess.run(["scontrol", "show", "job", job_id], env=dict(os.environ, **self.env),
                             capture_output=True, text=True)
        for token in out.stdout.split():
            if token.startswith(f"{field}="):
                return token.split("=", 1)[1]
        return ""

    def wait(self, job_id: str, timeout: float, done=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")) -> str:
        deadline = time.time() + timeout
        state = "UNKNOWN"
        while time.time() < deadline:
            state = self.job_state(job_id)
            if state in done:
                return state
            time.sleep(1)
        return state

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)
