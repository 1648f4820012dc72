"""Storage preflight: one-line failures for locations a run cannot use, before it writes anything.

- :func:`check_location`: the URL's scheme is supported, its storage host answers (one TCP connect,
  before the storage client's long retries), and a local directory can be created and written.
- :func:`check_reachable`: the bucket of a remote URL can be listed.
- :func:`probe_write`: write, read back and delete a probe object (``vla doctor``).

Each raises :class:`~pipeline.errors.UserError` naming the config key and the URL.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from urllib.parse import urlparse

from pipeline import fs
from pipeline.errors import UserError

__all__ = ["check_location", "check_reachable", "probe_write"]

_NOT_URLS = ("", "auto", "none")


def check_location(key: str, url: str, *, writable: bool = False) -> None:
    """UserError when ``url`` cannot work; ``writable``: a local path must be creatable + writable."""
    if url in _NOT_URLS:
        return
    if not fs.is_remote(url):
        if writable:
            fs.check_local_dir_writable(url, key)
        return
    scheme = url.split("://", 1)[0]
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except (ValueError, ImportError):
        raise UserError(f"{key}={url}: unsupported storage scheme '{scheme}://' (use a local path or gs://)") from None
    if scheme in ("gs", "gcs"):
        _check_gcs_host(key, url)


def _check_gcs_host(key: str, url: str) -> None:
    """One TCP connect to the emulator or storage.googleapis.com (skipped behind an HTTPS proxy)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if not emulator and any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy")):
        return
    host = urlparse(emulator or "https://storage.googleapis.com")
    port = host.port or (443 if host.scheme == "https" else 80)
    try:
        socket.create_connection((host.hostname, port), timeout=5).close()
    except OSError as e:
        raise UserError(f"{key}={url}: storage not reachable (cannot connect to {host.hostname}:{port}: "
                        f"{e.strerror or type(e).__name__})") from None


def check_reachable(key: str, url: str) -> None:
    """UserError when the bucket of remote ``url`` cannot be listed (no-op for local paths)."""
    if not fs.is_remote(url):
        return
    try:
        fsys, path = fs.get_fs(url)
        fsys.ls(path.split("/", 1)[0])
    except Exception as e:  # noqa: BLE001 - any storage failure is one line
        raise UserError(f"{key}={url}: storage not reachable ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]})") from e


def probe_write(url: str, prefix: str = ".vla-probe-") -> float:
    """Write, read back and delete a probe object ``<url>/<prefix><random>``; returns the seconds."""
    probe = fs.join(url, f"{prefix}{uuid.uuid4().hex[:12]}")
    payload = uuid.uuid4().bytes
    start = time.perf_counter()
    try:
        fs.write_bytes(probe, payload)
        if fs.read_bytes(probe) != payload:
            raise UserError(f"{probe}: read back different bytes")
        fs.remove(probe)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any storage error is the finding
        raise UserError(f"{url} not writable: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
    if fs.exists(probe):
        raise UserError(f"{probe}: could not delete the probe object")
    return time.perf_counter() - start
