"""What both backends share: dtype choice and LoRA target modules."""

from __future__ import annotations

import torch

from app.training_config import TrainingConfig


def compute_dtype(config: TrainingConfig) -> torch.dtype:
    """The spec's `dtype: null`: bfloat16 where the GPU has it, float16 on older GPUs, float32 on a CPU.

    On a CPU without native bf16, bf16 autocast made a step about 30x slower (measured), hence float32.
    """
    if config.model.dtype is not None:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[config.model.dtype]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def target_modules(config: TrainingConfig) -> list[str]:
    """The configured modules, less those the finetune_* switches turn off."""
    return config.lora.trained_modules
