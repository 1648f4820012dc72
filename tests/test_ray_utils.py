"""Connecting to Ray (pipeline/ray_utils.py): an unreachable cluster fails fast with one line naming
RAY_ADDRESS (curation and the Ray Train launcher), and a real head started with `ray start --head`
is used through RAY_ADDRESS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pipeline.errors import UserError
from pipeline.ray_utils import check_reachable, ray_endpoint
from tests.support.net import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, RAY_AUTH_MODE="disabled", TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _vla(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("address, endpoint", [
    ("10.1.2.3:6380", ("10.1.2.3", 6380)),
    ("head-svc", ("head-svc", 6379)),
    ("ray://head-svc:10001", ("head-svc", 10001)),
    ("ray://head-svc", ("head-svc", 10001)),
    ("[::1]:6390", ("::1", 6390)),
    ("auto", None),
    ("local", None),
])
def test_endpoint(address, endpoint):
    assert ray_endpoint(address) == endpoint


def test_bad_port_is_a_user_error():
    with pytest.raises(UserError, match="HOST:PORT"):
        ray_endpoint("head:abc")


def test_unreachable_names_the_source_and_address():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        check_reachable(f"127.0.0.1:{port}", "RAY_ADDRESS")
    assert time.monotonic() - t0 < 5.0  # a refused connection is not retried
    msg = str(err.value)
    assert msg.startswith(f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster reachable") and "\n" not in msg


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("raw"))
    proc = _vla(["fixture", f"out={root}", "datasets=[bridge_orig]", "episodes=3", "steps=4-6", "image_size=16"],
                _env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def _assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr[-3000:]


def test_curate_with_an_unreachable_ray_address_fails_fast(fixture_data, tmp_path):
    # Ray alone retries for minutes; the 60 s limit below would kill such a run (TimeoutExpired)
    address = f"127.0.0.1:{free_port()}"
    proc = _vla(["curate", "mixture=bridge", f"source={fixture_data}", f"out={tmp_path / 'out'}", "progress=false"],
                _env(RAY_ADDRESS=address), timeout=60)
    _assert_one_line_error(proc, f"RAY_ADDRESS={address}: no Ray cluster reachable")
    assert not (tmp_path / "out").exists()  # nothing written


def test_curate_with_an_unreachable_ray_address_key_names_the_key(fixture_data, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    proc = _vla(["curate", "mixture=bridge", f"source={fixture_data}", f"out={tmp_path / 'out'}",
                 f"ray.address={address}"], _env(RAY_ADDRESS=""), timeout=60)
    _assert_one_line_error(proc, f"ray.address={address}: no Ray cluster reachable")


def test_ray_train_launcher_with_an_unreachable_ray_address_fails_fast(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    proc = _vla(["launch", "backend=ray", f"train.run_dir={tmp_path / 'run'}", "ray.use_gpu=false",
                 "train.data.source=synthetic"], _env(RAY_ADDRESS=address), timeout=60)
    _assert_one_line_error(proc, f"RAY_ADDRESS={address}: no Ray cluster reachable")


@pytest.fixture()
def ray_head():
    """A real head started with `ray start --head --block` in its own session; stopped with SIGINT
    (its clean shutdown), never with `ray stop` (that would stop every Ray on the machine)."""
    tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths are length-limited
    port = free_port()
    ray_cli = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]  # `ray`
    cmd = [*ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
           "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}", "--block"]
    with open(os.path.join(tmp, "head.log"), "w") as log:
        head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert head.poll() is None, open(os.path.join(tmp, "head.log")).read()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "ray head did not open its port in 60 s"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_curate_through_ray_address_of_a_local_head(ray_head, fixture_data, tmp_path):
    out = tmp_path / "out"
    proc = _vla(["curate", "mixture=bridge", f"source={fixture_data}", f"out={out}", "progress=false"],
                _env(RAY_ADDRESS=ray_head), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in proc.stderr  # the head, not a local Ray of its own
    from pipeline.data.manifest import CuratedDataset

    manifest = CuratedDataset(str(out), "bridge_orig").read_manifest()
    assert manifest is not None and manifest["total_frames"] > 0 and manifest["shards"]
