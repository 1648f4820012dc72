"""One rank of the doctor's collective check.

``python -m launch._collective --rank R --world W --port P`` joins a TCP group on 127.0.0.1;
without ``--rank`` it joins from the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).
nccl when every local rank has a GPU, else gloo. All-reduces ``rank + 1`` and checks the sum;
rank 0 prints a one-line summary. :func:`allreduce_check` is also the Ray Train worker function.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys


def allreduce_check() -> str:
    """All-reduce ``rank + 1`` over the current process group; returns a summary or raises."""
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(value)
    expected = world * (world + 1) / 2
    if not torch.allclose(value.cpu(), torch.full((4,), expected)):
        raise RuntimeError(f"rank {rank}: all_reduce gave {value.tolist()}, expected {expected}")
    return f"all_reduce over {world} {backend} rank(s) = {expected:g} (expected)"


def _init(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    env = args.rank < 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if env else args.rank
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if env else args.world
    use_nccl = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    if use_nccl:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=60)
    if env:
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=timeout)
    else:
        dist.init_process_group("nccl" if use_nccl else "gloo", init_method=f"tcp://127.0.0.1:{args.port}",
                                rank=args.rank, world_size=args.world, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=-1, help="-1: from the torchrun environment")
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _init(args)
    rank = dist.get_rank()
    try:
        summary = allreduce_check()
    except RuntimeError as e:
        print(e)
        return 1
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
