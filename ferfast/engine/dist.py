"""torch.distributed helpers for ``torchrun``: process-group setup from its environment and small collectives.

NCCL on GPU, gloo on CPU; without torchrun's variables everything runs as a single process and the
collectives return their input. :func:`distributed` joins the group for the length of a block (the API and the
CLI use it), so ``torchrun --nproc_per_node N -m ferfast.train finetune ...`` trains with N processes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_gather_tensor",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup",
    "distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global rank, number of processes, rank on its node, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, which writes checkpoints and logs."""
    return get_rank() == 0


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    ``backend=None`` picks NCCL when CUDA is available, else gloo. Without those variables: one process, no group.
    """
    if is_distributed():  # already set up (e.g. by the caller)
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local, _device(local), rank == 0)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, 0, _device(0), True)
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent: need 0 <= RANK < WORLD_SIZE")
    device = _device(local)
    if world == 1:
        return DistInfo(0, 1, local, device, True)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set; launch with torchrun")
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    return DistInfo(rank, world, local, device, rank == 0)


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes, as a new tensor (a copy of it in a single process)."""
    if not torch.is_tensor(tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    out = tensor.detach().clone()
    if not is_distributed() or get_world_size() == 1:
        return out
    if not out.is_floating_point():
        out = out.to(torch.float64 if out.dtype == torch.int64 else torch.float32)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    out /= get_world_size()
    return out


@torch.no_grad()
def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (same shape on all of them) stacked as ``[world_size, *shape]``, on every process."""
    if not torch.is_tensor(tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    tensor = tensor.detach().contiguous()
    if not is_distributed() or get_world_size() == 1:
        return tensor.unsqueeze(0).clone()
    out = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(out, tensor)  # all_gather_into_tensor is deprecated in torch 2.14, its successor absent in 2.11
    return torch.stack(out)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (any picklable object), in rank order, on every process (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every process (any picklable object; returned as is in a single process)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def distributed(backend: str | None = None, timeout_s: float = 1800.0) -> Iterator[DistInfo]:
    """:func:`init_distributed` for the length of a ``with`` block; the group is left at its end if this block
    created it (a group the caller set up stays)."""
    owned = not is_distributed()
    info = init_distributed(backend, timeout_s)
    try:
        yield info
    finally:
        if owned:
            cleanup()
