"""The device a job runs on: which dtype it computes in, and the memory it holds."""

from __future__ import annotations

import gc

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def compute_dtype(configured: str | None = None, *, cpu: torch.dtype = torch.float32) -> torch.dtype:
    """The spec's `dtype: null`: bfloat16 where the GPU has it, float16 on older GPUs, `cpu` on a CPU.

    On a CPU without native bf16, bf16 autocast made a step about 30x slower (measured), hence float32 there
    for anything that trains or generates; a merged model saved for export passes cpu=torch.bfloat16 (16 bits).
    """
    if configured is not None:
        return DTYPES[configured]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return cpu


def free_memory() -> None:
    """Give back what a finished step or job held (model, optimizer state, cached CUDA blocks)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak_memory() -> None:
    """A job's peak memory is its own: a warm training process forgets the previous job's peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_memory_gib() -> float | None:
    """The most GPU memory the job's tensors held at once (allocated), since reset_peak_memory."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def peak_gpu_memory_reserved_gib() -> float | None:
    """The most the caching allocator held from the GPU at once (reserved: what other processes could not use)."""
    return round(torch.cuda.max_memory_reserved() / 2**30, 3) if torch.cuda.is_available() else None
