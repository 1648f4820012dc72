"""Ports for the tests' local servers (GCS emulator, Ray head, SLURM daemons, rendezvous)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago; nothing listens there until a test binds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
