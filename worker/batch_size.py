"""`training.per_device_train_batch_size: auto`: the largest batch whose training step fits, measured on the job's
own model and its longest rows before training, never guessed from the model's size.

Batches are tried doubling from 1 up to the effective batch (the last try is the effective batch itself when it
is not a power of two): each is one forward and backward pass of that many copies of the longest training row,
in the precision the trainer will use. The peak memory of the pass is read from the device (CUDA's allocator; on
a CPU the process's peak resident memory) and must stay within `auto_batch_memory_fraction` of the memory the job
can have. The first batch over the limit, or out of memory, ends the search; the one before it is picked and the
gradient accumulation follows. What was tried, and what each try took, is reported with the pick.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from app.datasets.encoding import Encoded
from app.training_config import TrainingConfig
from worker import ranks
from worker.devices import compute_dtype

log = logging.getLogger("forge.worker")

GIB = 2**30


class BatchTooLarge(RuntimeError):
    """Not even one example of the longest row fits in memory."""

    code = "out_of_memory"


@dataclass
class Trial:
    batch: int
    peak_gib: float | None  # None: the pass ran out of memory
    fits: bool


@dataclass
class BatchPlan:
    """What the trainer runs with: per-device batch x accumulation (each rank's) x ranks = the effective batch."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    auto: bool
    effective_batch_size: int = 0
    ranks: int = 1  # DDP processes, one per GPU (training.num_gpus)
    sequence_length: int | None = None  # of the rows the measured passes ran on
    device: str | None = None
    limit_gib: float | None = None
    trials: list[Trial] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.effective_batch_size = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.ranks

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPlan:
        trials = [Trial(**t) for t in data.get("trials", [])]
        return cls(**{**data, "trials": trials})


def candidates(cap: int) -> list[int]:
    """1, 2, 4, ... up to cap, and cap itself."""
    sizes = []
    size = 1
    while size < cap:
        sizes.append(size)
        size *= 2
    return [*sizes, cap]


def plan(
    config: TrainingConfig,
    model: Any,
    rows: list[Encoded],
    progress: Callable[[float, str], None] = lambda fraction, detail: None,
) -> BatchPlan:
    """The batch each DDP rank trains with: the configured one, or the measured largest that fits (measured on
    rank 0, the same for every rank)."""
    return ranks.from_leader(lambda: _plan(config, model, rows, progress, ranks.count()))


def _plan(
    config: TrainingConfig, model: Any, rows: list[Encoded], progress: Callable[[float, str], None], count: int
) -> BatchPlan:
    training = config.training
    batch = training.per_device_train_batch_size
    if isinstance(batch, int):
        fixed = BatchPlan(batch, training.accumulation_for(batch, count), auto=False, ranks=count)
        if fixed.effective_batch_size != training.effective_batch:  # num_gpus "all" on a count that does not divide
            log.warning(
                "%d ranks: %d examples per optimizer step instead of %d",
                count,
                fixed.effective_batch_size,
                training.effective_batch,
            )
        return fixed
    # A batch larger than the data is never a full one.
    cap = max(1, min(-(-training.effective_batch // count), len(rows)))
    longest = max(rows, key=lambda row: len(row.input_ids)).input_ids
    device = next(model.parameters()).device
    meter = _meter(device)
    limit = training.auto_batch_memory_fraction * meter.available()
    sizes = candidates(cap)
    trials: list[Trial] = []
    training_mode = model.training
    model.train()  # as the trainer runs it: dropout on, gradient checkpointing active
    for i, size in enumerate(sizes):
        progress(i / len(sizes), f"measuring a training step of batch {size} x {len(longest)} tokens")
        try:
            peak = meter.peak(partial(_train_pass, model, config, longest, size))
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            trials.append(Trial(size, None, False))
            break
        finally:
            _release(model)
        trials.append(Trial(size, round(peak / GIB, 3), peak <= limit))
        log.info("batch %d x %d tokens: peak %.3f GiB (limit %.3f GiB)", size, len(longest), peak / GIB, limit / GIB)
        if peak > limit:
            break
    model.train(training_mode)
    meter.reset()
    fitting = [t.batch for t in trials if t.fits]
    if not fitting:
        if trials[0].peak_gib is None:
            raise BatchTooLarge(
                f"one example of {len(longest)} tokens does not fit in memory for a training step; lower "
                "model.max_seq_length, or use model.load_in_4bit on a GPU"
            )
        log.warning("even batch 1 peaks over training.auto_batch_memory_fraction; training with batch 1")
        fitting = [1]
    picked = max(fitting)
    result = BatchPlan(
        picked,
        training.accumulation_for(picked, count),
        auto=True,
        ranks=count,
        sequence_length=len(longest),
        device=device.type,
        limit_gib=round(limit / GIB, 3),
        trials=trials,
    )
    log.info(
        "per_device_train_batch_size auto: %d (x %d accumulation x %d ranks = %d per optimizer step), tried %s",
        result.per_device_train_batch_size,
        result.gradient_accumulation_steps,
        count,
        result.effective_batch_size,
        ", ".join(f"{t.batch}: {t.peak_gib if t.peak_gib is not None else 'out of memory'}" for t in trials),
    )
    return result


def _train_pass(model: Any, config: TrainingConfig, input_ids: list[int], batch: int) -> None:
    """One forward and backward pass as a training step makes it, on `batch` copies of a row."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids] * batch, dtype=torch.long, device=device)
    dtype = compute_dtype(config.model.dtype)
    autocast = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
    with torch.autocast(device.type, dtype=dtype, enabled=autocast):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()


def _release(model: Any) -> None:
    model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is running out of memory: CUDA's, or the CPU allocator's (worker.child.classify too)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class _CudaMeter:
    """The caching allocator's peak reservation: what the device really had to give, fragmentation included."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def available(self) -> float:
        free, _total = torch.cuda.mem_get_info(self.device)
        return float(free + torch.cuda.memory_reserved(self.device))  # what other processes hold is not ours

    def peak(self, run: Callable[[], None]) -> float:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        run()
        torch.cuda.synchronize(self.device)
        return float(torch.cuda.max_memory_reserved(self.device))

    def reset(self) -> None:
        # The job's own peak (metrics/training-stats.json) is that of training, not of the tries.
        torch.cuda.reset_peak_memory_stats(self.device)


class _CpuMeter:
    """The process's peak resident memory (Linux's VmHWM), reset before each pass."""

    def available(self) -> float:
        return float(
            _proc_bytes(Path("/proc/meminfo"), "MemAvailable") + _proc_bytes(Path("/proc/self/status"), "VmRSS")
        )

    def peak(self, run: Callable[[], None]) -> float:
        # 5 in clear_refs resets the peak to the current resident size (Linux 4.0+). Where that is refused the
        # peak is the process's since it started: a cautious measure, never a low one.
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        run()
        return float(_proc_bytes(Path("/proc/self/status"), "VmHWM"))

    def reset(self) -> None:
        pass


def _proc_bytes(path: Path, key: str) -> int:
    """A `key: N kB` line of a /proc file, in bytes."""
    found = re.search(rf"^{key}:\s+(\d+) kB", path.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {key} in {path}")
    return int(found.group(1)) * 1024


def _meter(device: torch.device) -> _CudaMeter | _CpuMeter:
    return _CudaMeter(device) if device.type == "cuda" else _CpuMeter()
