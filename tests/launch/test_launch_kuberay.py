"""KubeRay backend: rendered RayJob / RayCluster manifests against the KubeRay v1 CRD fields,
the committed examples in infra/k8s, and ``kubectl apply``."""

from __future__ import annotations

import os
import shlex

import pytest
import yaml
from launch_helpers import REPO

from launch import kuberay
from launch.config import LaunchConfig
from pipeline.config import load_config
from pipeline.errors import UserError

PRESET = os.path.join(REPO, "launch", "configs", "kuberay_64xa100.yaml")


def _cfg(*extra: str) -> LaunchConfig:
    return load_config(LaunchConfig, list(extra), PRESET)


def _pod_spec_ok(template: dict, *, gpus: int | None) -> dict:
    spec = template["spec"]
    assert spec["serviceAccountName"]
    (container,) = spec["containers"]
    assert container["name"] and container["image"]
    res = container["resources"]
    assert res["requests"] == res["limits"]
    if gpus is None:
        assert "nvidia.com/gpu" not in res["limits"]
    else:
        assert res["limits"]["nvidia.com/gpu"] == str(gpus)
        assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    return spec


def _cluster_spec_ok(spec: dict, *, nodes: int, gpus: int) -> None:
    """Required fields of the KubeRay ray.io/v1 RayCluster spec."""
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and all(isinstance(v, str) for v in head["rayStartParams"].values())
    _pod_spec_ok(head["template"], gpus=None)
    (group,) = spec["workerGroupSpecs"]
    assert group["groupName"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == nodes
    assert isinstance(group["rayStartParams"], dict)
    _pod_spec_ok(group["template"], gpus=gpus)


def test_rayjob_manifest_schema():
    doc = yaml.safe_load(kuberay.render_manifest(_cfg()))
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    assert doc["metadata"]["name"] == "openvla-7b-64xa100" and doc["metadata"]["namespace"] == "vla"
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("vla launch backend=ray ")
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    _cluster_spec_ok(spec["rayClusterSpec"], nodes=8, gpus=8)


def test_raycluster_manifest_schema():
    doc = yaml.safe_load(kuberay.render_manifest(_cfg("kuberay.kind=RayCluster", "nodes=2", "gpus_per_node=4")))
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    assert "entrypoint" not in doc["spec"]
    _cluster_spec_ok(doc["spec"], nodes=2, gpus=4)


def test_entrypoint_round_trips_to_the_same_run():
    """The driver command on the head parses back into a ray launch of the same run."""
    cfg = _cfg()
    args = shlex.split(kuberay.ray_entrypoint(cfg))
    assert args[:2] == ["vla", "launch"]
    ray_cfg = load_config(LaunchConfig, args[2:])
    assert ray_cfg.backend == "ray" and ray_cfg.ray.use_gpu == "true"
    for key in ("job_name", "nodes", "gpus_per_node", "train"):  # train: run_dir, data, resume, every key
        assert getattr(ray_cfg, key) == getattr(cfg, key), key
    assert ray_cfg.ray.max_failures == cfg.ray.max_failures


def test_credentials_never_inline():
    text = kuberay.render_manifest(_cfg())
    assert "private_key" not in text and "key.json" not in text.split("\n", 3)[-1]
    doc = yaml.safe_load(kuberay.render_manifest(_cfg("kuberay.gcs_secret=vla-gcs-key")))
    pod = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": "gcs-key", "secret": {"secretName": "vla-gcs-key"}} in pod["volumes"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json"


@pytest.mark.parametrize("name, extra", [("rayjob_64xa100.yaml", []),
                                         ("raycluster_64xa100.yaml", ["kuberay.kind=RayCluster"])])
def test_committed_examples_are_current(name, extra):
    with open(os.path.join(REPO, "infra", "k8s", name)) as f:
        committed = f.read()
    assert committed == kuberay.render_manifest(_cfg(*extra)), (
        f"infra/k8s/{name} is stale: vla launch --config launch/configs/kuberay_64xa100.yaml "
        f"{' '.join(extra)} dry_run=true > infra/k8s/{name}")


def test_apply_with_kubectl(tmp_path, capsys):
    fake = tmp_path / "kubectl"
    seen = tmp_path / "applied.yaml"
    fake.write_text(f"#!/bin/bash\n[[ \"$*\" == 'apply -f -' ]] || exit 3\ncat > {seen}\n"
                    "echo rayjob.ray.io/openvla-7b-64xa100 created\n")
    fake.chmod(0o755)
    run_dir = f"file://{tmp_path}/run"
    cfg = _cfg(f"kuberay.kubectl={fake}", f"train.run_dir={run_dir}")
    assert kuberay.run_kuberay(cfg) == 0
    assert seen.read_text() == kuberay.render_manifest(cfg)
    assert (tmp_path / "run" / "launch" / "rayjob.yaml").read_text() == seen.read_text()
    assert "created" in capsys.readouterr().out


def test_missing_kubectl_is_user_error(tmp_path):
    with pytest.raises(UserError, match="kubectl"):
        kuberay.run_kuberay(_cfg("kuberay.kubectl=/nonexistent/kubectl", f"train.run_dir=file://{tmp_path}/run"))


def test_dry_run_prints_yaml(capsys):
    from pipeline.cli import main

    assert main(["launch", "--config", PRESET, "dry_run=true"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "RayJob"
