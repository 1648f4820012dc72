"""torchrun backend: one ``torchrun`` per node, c10d (elastic) or static rendezvous.

``torchrun.node_rank=-1`` starts every node on this machine: a single-node run, or a local
rehearsal of a multi-node job (``nodes=2 gpus_per_node=1`` gives two torchrun agents that meet at
``127.0.0.1:<free port>``, gloo on CPU). On a real cluster, run the same command on every node
with ``torchrun.node_rank=<i>`` and ``torchrun.rdzv_endpoint=<node0>:<port>``.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from launch._record import record, record_config
from launch.config import LaunchConfig
from launch.trainer import TRAIN_MODULE, train_overrides

__all__ = ["free_port", "torchrun_argv", "node_commands", "run_torchrun"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _endpoint(cfg: LaunchConfig) -> str:
    return cfg.torchrun.rdzv_endpoint or f"127.0.0.1:{free_port()}"


def torchrun_argv(cfg: LaunchConfig, node_rank: int, endpoint: str, entry: list[str] | None = None) -> list[str]:
    """The torchrun command line of one node; ``entry`` replaces ``-m pipeline.train.main ARGS``."""
    tr = cfg.torchrun
    argv = [tr.python or sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(cfg.nodes), "--nproc-per-node", str(cfg.gpus_per_node),
            "--max-restarts", str(tr.max_restarts)]
    if cfg.nodes == 1 and not tr.rdzv_endpoint:
        argv += ["--standalone"]
    elif tr.rdzv_backend == "c10d":
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                 "--rdzv-id", tr.rdzv_id or cfg.job_name, "--node-rank", str(node_rank)]
    else:
        host, _, port = endpoint.rpartition(":")
        argv += ["--node-rank", str(node_rank), "--master-addr", host, "--master-port", port]
    return argv + (entry if entry is not None else ["-m", TRAIN_MODULE, *train_overrides(cfg)])


def node_commands(cfg: LaunchConfig, entry: list[str] | None = None) -> list[list[str]]:
    """Commands started on this machine: every node (node_rank=-1) or just the given one."""
    endpoint = _endpoint(cfg)
    ranks = range(cfg.nodes) if cfg.torchrun.node_rank < 0 else [cfg.torchrun.node_rank]
    return [torchrun_argv(cfg, r, endpoint, entry) for r in ranks]


def _stop(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_all(procs: list[subprocess.Popen]) -> int:
    """Wait for every node; the first failure stops the others and is returned."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            _stop(procs)
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def _script(commands: list[list[str]]) -> str:
    """A shell script that starts the node commands together and waits for them."""
    if len(commands) == 1:
        return shlex.join(commands[0]) + "\n"
    return "".join(shlex.join(c) + " &\n" for c in commands) + "wait\n"


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM to the launcher stops the nodes it started, like Ctrl-C


def run_torchrun(cfg: LaunchConfig) -> int:
    commands = node_commands(cfg)
    if cfg.dry_run:
        print("".join(shlex.join(c) + "\n" for c in commands), end="")
        return 0
    record_config(cfg)
    record(cfg.train.run_dir, "torchrun.sh", "#!/bin/bash\n" + _script(commands))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    procs = [subprocess.Popen(c, env=env) for c in commands]
    try:
        return _wait_all(procs)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
