"""KubeRay backend: render a RayJob (or RayCluster) manifest from the launch config.

The cluster has a CPU-only head (runs the driver: ``vla launch backend=ray ...``) and one GPU
worker group of ``nodes`` pods with ``gpus_per_node`` GPUs each. Storage credentials come from
GKE workload identity (``serviceAccountName``) or, optionally, a Secret mounted as a key file;
no key ever lives in the repository. ``dry_run=true`` prints the YAML; otherwise it is written to
``<run_dir>/launch/`` and applied with ``kubectl apply -f -``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import yaml

from launch._record import record, record_config
from launch.config import LaunchConfig
from launch.trainer import train_overrides
from pipeline.errors import UserError

__all__ = ["ray_entrypoint", "cluster_spec", "manifest", "render_manifest", "run_kuberay"]

_KEY_DIR = "/var/secrets/google"


def ray_entrypoint(cfg: LaunchConfig) -> str:
    """The driver command run on the head: the Ray backend with the same launch settings."""
    args = ["vla", "launch", "backend=ray", f"job_name={cfg.job_name}", f"nodes={cfg.nodes}",
            f"gpus_per_node={cfg.gpus_per_node}", f"ray.max_failures={cfg.ray.max_failures}", "ray.use_gpu=true",
            f"ray.cpus_per_worker={max(1, cfg.kuberay.cpus_per_worker // cfg.gpus_per_node - 1)}"]
    args += [f"train.{item}" for item in train_overrides(cfg)]
    return shlex.join(args)


def _env(cfg: LaunchConfig) -> list[dict]:
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "RAY_AUTH_MODE", "value": "disabled"}]
    if cfg.kuberay.gcs_secret:
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{_KEY_DIR}/key.json"})
    return env


def _volumes(cfg: LaunchConfig) -> tuple[list[dict], list[dict]]:
    """``(volumes, volumeMounts)``: /dev/shm in memory, plus the optional key Secret."""
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.kuberay.shm_size}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if cfg.kuberay.gcs_secret:
        volumes.append({"name": "gcs-key", "secret": {"secretName": cfg.kuberay.gcs_secret}})
        mounts.append({"name": "gcs-key", "mountPath": _KEY_DIR, "readOnly": True})
    return volumes, mounts


def _pod(cfg: LaunchConfig, name: str, resources: dict, *, gpu: bool) -> dict:
    volumes, mounts = _volumes(cfg)
    container = {"name": name, "image": cfg.kuberay.image, "imagePullPolicy": "IfNotPresent",
                 "env": _env(cfg), "resources": {"requests": dict(resources), "limits": dict(resources)},
                 "volumeMounts": mounts}
    if not gpu:
        container["ports"] = [{"containerPort": 6379, "name": "gcs"},
                              {"containerPort": 8265, "name": "dashboard"},
                              {"containerPort": 10001, "name": "client"}]
    spec: dict = {"serviceAccountName": cfg.kuberay.service_account, "containers": [container],
                  "volumes": volumes}
    if gpu:
        spec["nodeSelector"] = {"cloud.google.com/gke-accelerator": cfg.kuberay.accelerator}
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {"app.kubernetes.io/name": "vla-pipeline", "vla/job": cfg.job_name}},
            "spec": spec}


def cluster_spec(cfg: LaunchConfig) -> dict:
    """A RayCluster ``spec``: CPU head (no training work) + one fixed-size GPU worker group."""
    k = cfg.kuberay
    head = _pod(cfg, "ray-head", {"cpu": str(k.head_cpus), "memory": k.head_memory}, gpu=False)
    worker = _pod(cfg, "ray-worker", {"cpu": str(k.cpus_per_worker), "memory": k.memory_per_worker,
                                      "nvidia.com/gpu": str(cfg.gpus_per_node)}, gpu=True)
    return {
        "rayVersion": k.ray_version,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
                          "template": head},
        "workerGroupSpecs": [{
            "groupName": "gpu-workers",
            "replicas": cfg.nodes, "minReplicas": cfg.nodes, "maxReplicas": cfg.nodes,
            "rayStartParams": {"num-gpus": str(cfg.gpus_per_node)},
            "template": worker,
        }],
    }


def _metadata(cfg: LaunchConfig) -> dict:
    return {"name": cfg.job_name, "namespace": cfg.kuberay.namespace,
            "labels": {"app.kubernetes.io/name": "vla-pipeline", "vla/job": cfg.job_name}}


def manifest(cfg: LaunchConfig) -> dict:
    """The RayJob or RayCluster object for ``cfg`` (pure)."""
    if cfg.kuberay.kind == "RayCluster":
        return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": _metadata(cfg),
                "spec": cluster_spec(cfg)}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _metadata(cfg), "spec": {
        "entrypoint": ray_entrypoint(cfg),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 3600,
        "rayClusterSpec": cluster_spec(cfg),
    }}


def render_manifest(cfg: LaunchConfig) -> str:
    header = (f"# Rendered by `vla launch backend=kuberay` from the launch config ({cfg.job_name}).\n"
              "# Credentials: GKE workload identity via serviceAccountName (bind it to a GCP service\n"
              "# account with storage access), or kuberay.gcs_secret=<Secret with key.json>.\n")
    return header + yaml.safe_dump(manifest(cfg), sort_keys=False, width=100)


def run_kuberay(cfg: LaunchConfig) -> int:
    text = render_manifest(cfg)
    if cfg.dry_run:
        print(text, end="")
        return 0
    exe = shutil.which(cfg.kuberay.kubectl)
    if exe is None:
        raise UserError(f"kuberay.kubectl: '{cfg.kuberay.kubectl}' not found on PATH (install kubectl "
                        "and point it at the cluster, or use dry_run=true to print the manifest)")
    record_config(cfg)
    url = record(cfg.train.run_dir, f"{cfg.kuberay.kind.lower()}.yaml", text)
    proc = subprocess.run([exe, "apply", "-f", "-"], input=text, text=True, capture_output=True)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        print(f"error: kubectl apply failed: {proc.stderr.strip()}", file=sys.stderr)
        return proc.returncode
    print(f"applied {cfg.kuberay.kind} {cfg.kuberay.namespace}/{cfg.job_name} (manifest {url})")
    if cfg.kuberay.kind == "RayCluster":
        print(f"submit the run with: ray job submit --address http://{cfg.job_name}-head-svc:8265 -- "
              f"{ray_entrypoint(cfg)}")
    return 0
