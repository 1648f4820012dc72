"""The wheel as users install it: built from a copy of the tree, installed with only ``[serve]`` into
a fresh venv, then ``vla serve --help``, a live ``vla serve`` request and a ``VLAPolicy`` prediction on
a tiny export (equal to the checkout's), with neither TensorFlow nor Ray importable there; and the
shipped mixtures and registry from another directory (``vla mixture show``, ``vla dataset show``).

torch: installing PyPI's torch into every test venv would copy ~5 GB (the CUDA build and its
``nvidia-*`` libraries). The venv instead sees, through a ``.pth`` file, a folder of symlinks to
exactly the distributions of torch + torchvision and their declared requirement closure (metadata
included), as installed in the test environment. pip resolves ``[serve]`` for real against that
(nothing is installed with ``--no-deps``): a TensorFlow or Ray requirement anywhere in the extra
would be installed into the venv and fail the checks below; and the folder holds nothing else, so
TensorFlow and Ray cannot leak in from the test environment (asserted too).
"""

from __future__ import annotations

import base64
import http.client
import importlib.metadata
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from vla_export_helpers import INSTRUCTIONS, export_tiny, image

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("tensorflow", "tensorflow_datasets", "ray")
_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv*", "tests", "build", "dist", "*.egg-info", "__pycache__",
                                      "runs", "demo_out", ".pytest_cache", ".ruff_cache")


def _child_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return env


def _run(cmd: list[str], cwd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_child_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def link_closure(roots: tuple[str, ...], out: str) -> set[str]:
    """Symlink into ``out`` every top-level file/folder of the installed distributions ``roots`` and of
    their requirement closure (markers and extras evaluated); returns the distribution names."""
    os.makedirs(out, exist_ok=True)
    todo: list[tuple[str, tuple[str, ...]]] = [(r, ()) for r in roots]
    done: dict[str, set[str]] = {}
    while todo:
        raw, extras = todo.pop()
        name = canonicalize_name(raw)
        if name in done and set(extras) <= done[name]:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (triton: removed by `make install`): pip installs it
        done[name] = done.get(name, set()) | set(extras)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((req.name, tuple(req.extras)))
        base = str(dist.locate_file(""))
        for top in {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src, dst = os.path.join(base, top), os.path.join(out, top)
            if top != "__pycache__" and not top.endswith(".pth") and os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)
    return set(done)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("wheel")
    src, dist = str(root / "src"), str(root / "dist")
    shutil.copytree(ROOT, src, symlinks=True, ignore=_COPY_IGNORE)  # keeps pipeline/dataset_mixtures a link
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src], cwd=src)  # isolated build, as users get
    (name,) = os.listdir(dist)
    return os.path.join(dist, name)


@pytest.fixture(scope="module")
def serve_venv(wheel, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("venv")
    venv, link = str(root / "venv"), str(root / "torch-link")
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", "--without-pip", venv], cwd=str(root))
    python = os.path.join(venv, "bin", "python")
    linked = link_closure(("torch", "torchvision"), link)
    assert not {canonicalize_name(h) for h in HEAVY} & linked and "torch" in linked
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=str(root))
    with open(os.path.join(site.stdout.strip(), "zz_torch_link.pth"), "w") as f:
        f.write(link + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
          "-c", os.path.join(ROOT, "constraints.txt"), f"{wheel}[serve]"], cwd=str(root), timeout=900)
    return {"python": python, "vla": os.path.join(venv, "bin", "vla"), "site": site.stdout.strip(),
            "cwd": str(root)}


def test_wheel_ships_mixtures_registry_and_launch_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    mixtures = sorted(f for f in os.listdir(os.path.join(ROOT, "dataset_mixtures")) if f.endswith(".yaml"))
    registry = sorted(os.listdir(os.path.join(ROOT, "dataset_mixtures", "registry")))
    assert mixtures and registry
    assert {f"pipeline/dataset_mixtures/{m}" for m in mixtures} <= names
    assert {f"pipeline/dataset_mixtures/registry/{r}" for r in registry} <= names
    assert "launch/configs/ray_local.yaml" in names and "pipeline/resources.py" in names


def test_serve_extra_has_neither_tensorflow_nor_ray(serve_venv):
    code = ("import importlib.util, json, pipeline; print(json.dumps({'file': pipeline.__file__, "
            f"'found': [m for m in {HEAVY!r} if importlib.util.find_spec(m) is not None]}}))")
    out = json.loads(_run([serve_venv["python"], "-c", code], cwd=serve_venv["cwd"]).stdout)
    assert out["found"] == []
    assert out["file"].startswith(serve_venv["site"])  # the wheel's copy, not the checkout
    listed = _run([sys.executable, "-m", "pip", "--python", serve_venv["python"], "list", "--format=json"],
                  cwd=serve_venv["cwd"]).stdout
    names = {canonicalize_name(p["name"]) for p in json.loads(listed)}
    assert {"vla-pipeline", "torch", "transformers", "timm"} <= names
    assert not names & {"tensorflow", "tensorflow-cpu", "tensorflow-datasets", "ray"}


def test_vla_serve_help(serve_venv):
    out = _run([serve_venv["vla"], "serve", "--help"], cwd=serve_venv["cwd"]).stdout
    assert out.startswith("usage: vla serve") and "POST /act" in out and "quantization" in out


_PREDICT = """
import json, sys
import numpy as np
from pipeline.inference import VLAPolicy
policy = VLAPolicy.from_pretrained(sys.argv[1], quantization="fp32", device="cpu")
img = np.asarray(json.loads(sys.argv[2]), dtype=np.uint8)
action = policy.predict_action(img, sys.argv[3])
heavy = [m for m in ("tensorflow", "ray", "tensorflow_datasets") if m in sys.modules]
print(json.dumps({"action": action.tolist(), "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> str:
    return export_tiny(str(tmp_path_factory.mktemp("export") / "export"))


def _reference(export: str, img: np.ndarray, instruction: str) -> np.ndarray:
    """The checkout's prediction, on one thread like the venv's processes (OMP_NUM_THREADS=1): a
    different thread count may round differently and flip a near-tie of the greedy decode."""
    from pipeline.inference import VLAPolicy

    return VLAPolicy.from_pretrained(export, quantization="fp32", device="cpu").predict_action(img, instruction)


def test_policy_prediction_equals_the_checkouts(serve_venv, export, one_torch_thread):
    img = image(3)
    out = _run([serve_venv["python"], "-c", _PREDICT, export, json.dumps(img.tolist()), INSTRUCTIONS[0]],
               cwd=serve_venv["cwd"])
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    np.testing.assert_array_equal(np.asarray(got["action"], np.float32), _reference(export, img, INSTRUCTIONS[0]))


def _post_act(url_line: str, img: np.ndarray, instruction: str) -> tuple[int, dict]:
    from PIL import Image

    host, port = url_line.split(" on http://")[1].split()[0].rstrip("/").split(":")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "instruction": instruction})
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", "/act", body=body.encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_live_server_answers_act(serve_venv, export, one_torch_thread):
    proc = subprocess.Popen([serve_venv["vla"], "serve", f"checkpoint={export}", "port=0", "device=cpu",
                             "quantization=fp32"], cwd=serve_venv["cwd"], env=_child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    status, out = 0, {}
    try:
        for line in proc.stdout:  # "serving <export> on http://127.0.0.1:PORT (...)"
            lines.append(line)
            if line.startswith("serving "):
                status, out = _post_act(line, image(4), INSTRUCTIONS[1])
                break
    finally:
        proc.send_signal(signal.SIGINT)
        lines.append(proc.communicate(timeout=60)[0])
    log = "".join(lines)[-3000:]
    assert status == 200 and proc.returncode == 0, (status, out, proc.returncode, log)
    expected = _reference(export, image(4), INSTRUCTIONS[1])
    np.testing.assert_array_equal(np.asarray(out["action"], np.float32), expected, err_msg=log)


def test_mixtures_and_registry_from_another_directory(serve_venv, tmp_path):
    out = _run([serve_venv["vla"], "mixture", "show", "oxe_magic_soup_plus"], cwd=str(tmp_path)).stdout
    assert os.path.join(serve_venv["site"], "pipeline", "dataset_mixtures", "oxe_magic_soup_plus.yaml") in out
    assert "droid" in out and "fractal20220817_data" in out
    entry = _run([serve_venv["vla"], "dataset", "show", "acme_arm_demo"], cwd=str(tmp_path)).stdout
    assert "name: acme_arm_demo" in entry and "dataset_mixtures/registry/acme_arm_demo.yaml" in entry
