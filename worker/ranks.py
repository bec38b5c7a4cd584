"""What a job's steps ask when it trains on several DDP ranks (worker/distributed.py starts them): which rank this
is, and what all ranks must agree on. In a single training process every answer is the one-process one.

The ranks agree through a gloo group (the default group on a CPU; beside NCCL's on GPUs, so that small Python
objects never need a CUDA tensor).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from worker.protocol import StopMode

_T = TypeVar("_T")
# As long as the trainer's own collectives wait (TrainingArguments.ddp_timeout): the other ranks wait this long
# for rank 0 while it runs the baseline alone.
TIMEOUT = timedelta(minutes=30)

_control: Any = None  # the gloo group of this job's ranks; None in a single training process


def join() -> None:
    """Join this job's ranks (torchrun's environment: RANK, WORLD_SIZE, MASTER_ADDR...), each on its own GPU."""
    global _control
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", timeout=TIMEOUT)
        _control = dist.new_group(backend="gloo", timeout=TIMEOUT)
    else:
        # Accelerate names a CPU rank's device cpu:0, and the trainer's resume loads the optimizer state onto it,
        # which torch.load cannot restore ("don't know how to restore data location"): plain "cpu" can.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
        dist.init_process_group("gloo", timeout=TIMEOUT)
        _control = dist.group.WORLD


def leave() -> None:
    global _control
    if _control is not None:
        dist.destroy_process_group()
        _control = None


def count() -> int:
    """How many ranks train the job."""
    return dist.get_world_size() if _control is not None else 1


def rank() -> int:
    return dist.get_rank() if _control is not None else 0


def leader() -> bool:
    """Rank 0: the one that reports to the worker and writes the job's files."""
    return rank() == 0


def from_leader(make: Callable[[], _T]) -> _T:
    """`make()` run on rank 0, its value handed to every rank (the job's spec, the batch plan)."""
    if _control is None:
        return make()
    box = [make() if leader() else None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]  # type: ignore[return-value]


def agree(mode: StopMode) -> StopMode:
    """Rank 0's stop mode, for every rank: a step ends the same way on all, or their collectives would part."""
    if _control is None:
        return mode
    value = torch.tensor([int(mode)], dtype=torch.int32)
    dist.broadcast(value, src=0, group=_control)
    return StopMode(int(value.item()))


def device_map() -> Any:
    """Where a backend that places the model itself puts it: this rank's GPU, or Unsloth's default."""
    return {"": torch.cuda.current_device()} if _control is not None and torch.cuda.is_available() else "sequential"
