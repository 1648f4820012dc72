"""Connecting to Ray: an existing cluster when an address is given, else a local one."""

from __future__ import annotations

import os

__all__ = ["connect_ray"]


def connect_ray(address: str = "", num_cpus: int = 0, *, log_to_driver: bool = False) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start local Ray with ``num_cpus`` CPUs
    (0: all of this machine's). Returns True when this call started/connected Ray, False when
    it was already initialized (the caller then must not shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=log_to_driver)
    return True
