"""A local gcp-storage-emulator process on 127.0.0.1 (tests and the fault suite).

It can be stopped and restarted on the same port and data directory, which is how the fault suite
simulates a storage outage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from tests.support.net import free_port

__all__ = ["GcsEmulator", "BUCKET"]

BUCKET = "test-bucket"
_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_main.py")  # run as a script


class GcsEmulator:
    """A gcp-storage-emulator process on 127.0.0.1; can be stopped and restarted (fault tests)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="gcs-emu-")
        self.host = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # through our launcher: the stock emulator drops a trailing 0x0d byte of uploads
        cmd = [sys.executable, _MAIN, "-d", self.data_dir, "start", "--host", "127.0.0.1", "--port", str(self.port),
               "--default-bucket", BUCKET]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.host}/storage/v1/b", timeout=1)
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("GCS emulator did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
