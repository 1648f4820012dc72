"""Connecting to Ray: an existing cluster when an address is given, else a local one.

A given address is probed with a plain TCP connect first: Ray itself retries an unreachable GCS
for minutes ("Failed to connect to GCS ... within 5 seconds", again and again) before it says
anything, so a wrong ``RAY_ADDRESS`` would look like a hang.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from pipeline.errors import UserError

__all__ = ["connect_ray", "check_reachable", "ray_endpoint", "CONNECT_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 5.0
_GCS_PORT = 6379  # Ray's default head port
_CLIENT_PORT = 10001  # Ray Client's default (ray://)


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` a Ray address connects to; None for ``auto``/``local`` (found by Ray itself)."""
    address = address.strip()
    if address in ("auto", "local"):
        return None
    if "://" in address:
        url = urlsplit(address)
        default = _CLIENT_PORT if url.scheme == "ray" else _GCS_PORT
        try:
            port = url.port
        except ValueError as e:
            raise UserError(f"Ray address {address!r}: bad port ({e})") from None
        return url.hostname or "", port or default
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:  # no port given (also a bare [IPv6])
        return address.strip("[]"), _GCS_PORT
    if not port.isdigit():
        raise UserError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    return host.strip("[]"), int(port)


def check_reachable(address: str, source: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line :class:`UserError` naming ``source`` (``RAY_ADDRESS`` or the config key) and
    the address when nothing accepts a TCP connection there within ``timeout_s``."""
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = f"no answer in {timeout_s:g}s" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise UserError(f"{source}={address}: no Ray cluster reachable at {host}:{port} ({reason.lower()}); "
                        f"start one with `ray start --head` or unset {source}") from None


def connect_ray(address: str = "", num_cpus: int = 0, *, log_to_driver: bool = False,
                key: str = "ray.address") -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start local Ray with ``num_cpus`` CPUs
    (0: all of this machine's). Returns True when this call started/connected Ray, False when
    it was already initialized (the caller then must not shut it down). ``key`` names the config
    key ``address`` came from in the error for an unreachable cluster."""
    import ray

    if ray.is_initialized():
        return False
    source = key if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        check_reachable(address, source)
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=log_to_driver)
    return True
