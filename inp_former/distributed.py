"""Processes launched by ``torchrun``: the process group, rank, world size and who writes.

The only module that reads torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). Before a process group exists (argument parsing, messages printed while the
model loads) the environment answers; once :func:`process_group` has joined one, the group does.
Training uses it now; sharded scoring builds on the same calls.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched() -> bool:
    """True when this process is one of several started by ``torchrun`` (WORLD_SIZE > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: the group's when joined, else torchrun's ``RANK`` (0 alone)."""
    return dist.get_rank() if initialized() else _env_int("RANK", 0)


def world_size() -> int:
    """How many processes share the job: the group's when joined, else ``WORLD_SIZE`` (1 alone)."""
    return dist.get_world_size() if initialized() else _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``): which GPU it takes."""
    return _env_int("LOCAL_RANK", 0)


def is_writer() -> bool:
    """True on the one process that writes shared files and prints results (rank 0)."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device | str = "auto") -> Iterator[tuple[torch.device, int]]:
    """Join torchrun's process group for the block; yields (this process's device, rank).

    Alone (no torchrun, or a group joined already by the caller): no group is made or destroyed
    and the device is ``device`` resolved. Under torchrun: NCCL with ``cuda:LOCAL_RANK`` when CUDA
    is there and ``device`` is not ``cpu``, else gloo on the CPU.
    """
    from inp_former.config import resolve_device

    if not launched() or initialized():
        yield resolve_device(device), rank()
        return
    use_cuda = torch.cuda.is_available() and str(device) != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield (torch.device("cuda", local_rank()) if use_cuda else torch.device("cpu")), dist.get_rank()
    finally:
        dist.destroy_process_group()


__all__ = ["launched", "initialized", "rank", "world_size", "local_rank", "is_writer", "process_group"]
