"""One launch config for every backend: where to run, on how many nodes, and what to train.

A YAML preset in ``launch/configs/`` plus ``key=value`` overrides (``vla launch --config FILE
key=value``). ``train`` is the typed :class:`pipeline.train.config.TrainConfig` of the run (the
same keys as ``vla train``, under ``train.``: ``train.run_dir``, ``train.data.mixture``, ...),
checked when the launch config is parsed. ``doctor`` holds the settings of ``vla doctor FILE``,
the preflight of the same config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.config import helpfield
from pipeline.errors import ConfigError
from pipeline.train.config import TrainConfig

__all__ = [
    "BACKENDS",
    "LaunchConfig",
    "TorchrunConfig",
    "SlurmConfig",
    "RayConfig",
    "KubeRayConfig",
    "DoctorConfig",
    "world_size",
]

BACKENDS = ("torchrun", "slurm", "ray", "kuberay")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# D-HH[:MM[:SS]] or [HH:]MM:SS. Plain minutes are refused: YAML 1.1 reads an unquoted 12:00:00 as
# the base-60 integer 43200, which SLURM would take as 30 days.
_SLURM_TIME_RE = re.compile(r"^(\d+-\d+(:\d{1,2}){0,2}|\d+(:\d{1,2}){1,2})$")


@dataclass
class TorchrunConfig:
    node_rank: int = helpfield(
        -1, "-1: start every node on this machine (single node, or a local multi-node rehearsal); "
        ">=0: start only this node and join rdzv_endpoint")
    rdzv_backend: str = helpfield("c10d", "c10d (elastic rendezvous) | static (--master-addr/--master-port)")
    rdzv_endpoint: str = helpfield("", "host:port of node 0; empty = 127.0.0.1 and a free port")
    rdzv_id: str = helpfield("", "rendezvous id shared by all nodes; empty = job_name")
    max_restarts: int = helpfield(0, "torchrun restarts of the local worker group")
    python: str = helpfield("", "python executable for torchrun; empty = the one running vla")

    def __post_init__(self) -> None:
        if self.rdzv_backend not in ("c10d", "static"):
            raise ConfigError("rdzv_backend", self.rdzv_backend, "expected c10d or static")
        if self.rdzv_endpoint and not re.match(r"^[^:\s]+:\d+$", self.rdzv_endpoint):
            raise ConfigError("rdzv_endpoint", self.rdzv_endpoint, "expected host:port")
        if self.max_restarts < 0:
            raise ConfigError("max_restarts", self.max_restarts, "must be >= 0")


@dataclass
class SlurmConfig:
    partition: str = helpfield("", "#SBATCH --partition (empty = cluster default)")
    account: str = helpfield("", "#SBATCH --account (empty = none)")
    time: str = helpfield("48:00:00", "#SBATCH --time: HH:MM:SS or D-HH:MM:SS (quote it: slurm.time='12:00:00')")
    signal_seconds: int = helpfield(120, "SIGUSR1 this many seconds before the time limit (checkpoint)")
    requeue: bool = helpfield(True, "requeue the job on preemption / time limit (resumes from run_dir)")
    use_gpus: bool = helpfield(True, "request --gpus-per-node; false for CPU partitions")
    cpus_per_task: int = helpfield(0, "#SBATCH --cpus-per-task (one task per node); 0 = not set")
    mem: str = helpfield("", "#SBATCH --mem, e.g. 0 (all) or 500G; empty = not set")
    port: int = helpfield(29500, "rendezvous port on the first node")
    log_dir: str = helpfield("", "local/shared dir for slurm-%j.out; empty = <run_dir>/launch when local")
    setup: list[str] = helpfield([], "shell lines run before srun (module load, source venv/bin/activate)")
    extra_sbatch: list[str] = helpfield([], "extra #SBATCH options, e.g. --exclusive, --qos=high")
    python: str = helpfield("python", "python executable on the compute nodes")
    sbatch: str = helpfield("sbatch", "sbatch executable")

    def __post_init__(self) -> None:
        if not _SLURM_TIME_RE.match(self.time):
            raise ConfigError("time", self.time, "expected HH:MM:SS or D-HH:MM:SS in quotes (an unquoted "
                              "12:00:00 is read as the number 43200): slurm.time='12:00:00'")
        if self.signal_seconds < 0 or self.signal_seconds > 65535:
            raise ConfigError("signal_seconds", self.signal_seconds, "expected 0..65535 seconds")
        if self.cpus_per_task < 0:
            raise ConfigError("cpus_per_task", self.cpus_per_task, "must be >= 0")
        if not 0 < self.port < 65536:
            raise ConfigError("port", self.port, "expected 1..65535")


@dataclass
class RayConfig:
    address: str = helpfield("", "Ray cluster address; empty = $RAY_ADDRESS, else a local Ray")
    max_failures: int = helpfield(3, "worker-group restarts before the run fails (-1 = unlimited)")
    use_gpu: str = helpfield("auto", "auto | true | false: one GPU per worker")
    cpus_per_worker: float = helpfield(1.0, "CPUs reserved per training worker")
    num_cpus: int = helpfield(0, "CPUs for a local Ray started by vla (0 = all CPUs)")
    storage_path: str = helpfield("", "Ray Train run storage; empty = <run_dir>/ray")

    def __post_init__(self) -> None:
        self.use_gpu = str(self.use_gpu).lower()  # a YAML/CLI true/false arrives as "True"/"False"
        if self.use_gpu not in ("auto", "true", "false"):
            raise ConfigError("use_gpu", self.use_gpu, "expected auto, true or false")
        if self.max_failures < -1:
            raise ConfigError("max_failures", self.max_failures, "expected -1 (unlimited) or >= 0")
        if self.cpus_per_worker <= 0:
            raise ConfigError("cpus_per_worker", self.cpus_per_worker, "must be > 0")


@dataclass
class KubeRayConfig:
    kind: str = helpfield("RayJob", "RayJob (cluster lives for one run) | RayCluster (long-lived)")
    namespace: str = helpfield("default", "Kubernetes namespace")
    image: str = helpfield("us-docker.pkg.dev/PROJECT/vla/pipeline:0.1.0", "container image (infra/docker)")
    ray_version: str = helpfield("2.60.0", "spec.rayVersion; must match the image")
    service_account: str = helpfield("vla-train", "pod serviceAccountName (GKE workload identity for gs://)")
    gcs_secret: str = helpfield("", "optional Secret holding key.json; prefer workload identity")
    accelerator: str = helpfield("nvidia-tesla-a100", "cloud.google.com/gke-accelerator node selector")
    cpus_per_worker: int = helpfield(48, "CPU request/limit of each GPU worker pod")
    memory_per_worker: str = helpfield("600Gi", "memory request/limit of each GPU worker pod")
    shm_size: str = helpfield("64Gi", "/dev/shm size (emptyDir, medium Memory)")
    head_cpus: int = helpfield(8, "CPU of the head pod (no GPUs, runs the driver)")
    head_memory: str = helpfield("32Gi", "memory of the head pod")
    kubectl: str = helpfield("kubectl", "kubectl executable")

    def __post_init__(self) -> None:
        if self.kind not in ("RayJob", "RayCluster"):
            raise ConfigError("kind", self.kind, "expected RayJob or RayCluster")
        if not _NAME_RE.match(self.namespace):
            raise ConfigError("namespace", self.namespace, "not a valid Kubernetes name")
        if self.cpus_per_worker < 1 or self.head_cpus < 1:
            key = "cpus_per_worker" if self.cpus_per_worker < 1 else "head_cpus"
            raise ConfigError(key, getattr(self, key), "must be >= 1")


@dataclass
class DoctorConfig:
    """``vla doctor``: how the preflight of a launch config runs."""

    min_free_gb: float = helpfield(5.0, "disk: free space needed where run_dir (or local staging) lives")
    collective: str = helpfield(
        "local", "local: a collective_procs group on this machine | backend: through the launch backend "
        "(torchrun: every node of the config via its rendezvous; ray: nodes*gpus_per_node Ray workers)")
    collective_procs: int = helpfield(2, "collective=local: processes in the all_reduce group")
    collective_timeout_s: int = helpfield(120, "collective: give up after this many seconds")

    def __post_init__(self) -> None:
        if self.collective not in ("local", "backend"):
            raise ConfigError("collective", self.collective, "expected local or backend")


@dataclass
class LaunchConfig:
    backend: str = helpfield("torchrun", "torchrun | slurm | ray | kuberay")
    job_name: str = helpfield("vla", "job / rendezvous / Kubernetes name (lowercase, digits, '-')")
    nodes: int = helpfield(1, "number of nodes")
    gpus_per_node: int = helpfield(1, "training processes (GPUs) per node")
    dry_run: bool = helpfield(False, "print the commands / sbatch script / manifest instead of running")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/vla"),
                               metadata={"help": "the run: `vla train` keys (run_dir: local path or gs:// URL)"})
    torchrun: TorchrunConfig = helpfield(TorchrunConfig())
    slurm: SlurmConfig = helpfield(SlurmConfig())
    ray: RayConfig = helpfield(RayConfig())
    kuberay: KubeRayConfig = helpfield(KubeRayConfig())
    doctor: DoctorConfig = helpfield(DoctorConfig())

    # keys that moved into the typed train section
    MOVED_KEYS: ClassVar[dict[str, str]] = {"run_dir": "train.run_dir", "resume": "train.resume",
                                            "mixture": "train.data.mixture", "curated": "train.data.data_root"}

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"unknown backend, expected one of {', '.join(BACKENDS)}")
        if self.nodes < 1:
            raise ConfigError("nodes", self.nodes, "expected >= 1")
        if self.gpus_per_node < 1:
            raise ConfigError("gpus_per_node", self.gpus_per_node, "expected >= 1 (processes per node)")
        if not _NAME_RE.match(self.job_name) or len(self.job_name) > 40:
            raise ConfigError("job_name", self.job_name, "must be lowercase letters, digits and '-' (<= 40 chars)")
        if self.torchrun.node_rank >= self.nodes:
            raise ConfigError("torchrun.node_rank", self.torchrun.node_rank, f"expected < nodes ({self.nodes})")
        if self.torchrun.node_rank >= 0 and self.nodes > 1 and not self.torchrun.rdzv_endpoint:
            raise ConfigError("torchrun.rdzv_endpoint", "", "set it to <node0-host>:<port> when starting one node "
                              "of several (torchrun.node_rank >= 0)")
        if self.backend == "kuberay" and "://" not in self.train.run_dir:
            raise ConfigError("train.run_dir", self.train.run_dir,
                              "kuberay needs a shared run_dir URL (gs://bucket/...), not a local path")
        if self.doctor.collective == "backend" and self.backend not in ("torchrun", "ray"):
            raise ConfigError("doctor.collective", "backend", f"backend={self.backend} has no in-place collective "
                              "check; run `vla doctor ... backend=torchrun doctor.collective=backend` on the nodes")


def world_size(cfg: LaunchConfig) -> int:
    """Total number of training processes."""
    return cfg.nodes * cfg.gpus_per_node
