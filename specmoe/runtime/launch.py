"""Process-group set-up: torchrun's environment on GPUs, torch.multiprocessing spawn on CPU."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, backend, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args, backend: str = "gloo") -> None:
    """Run `fn(rank, world, *args)` in `world` fresh processes (spawn) with a process group."""
    torch.set_num_threads(1)
    mp.start_processes(_entry, args=(world, free_port(), backend, fn, args), nprocs=world,
                       join=True, start_method="spawn")


def init_from_env() -> tuple[int, int, torch.device]:
    """Under torchrun: NCCL when CUDA is there (one GPU per local rank), else gloo."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return rank, world, device
