"""The spec's `training` section as TRL's SFTConfig, the same for both backends."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from trl import SFTConfig

from app.training_config import TrainingConfig
from worker.batch_size import BatchPlan
from worker.devices import compute_dtype

log = logging.getLogger("forge.worker")


def optimizer(name: str) -> str:
    """8-bit optimizers need bitsandbytes on CUDA; elsewhere fall back to AdamW and say so."""
    if "8bit" in name and not (torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")):
        log.info("optim %s needs bitsandbytes on CUDA; using adamw_torch", name)
        return "adamw_torch"
    return name


def sft_config(config: TrainingConfig, output_dir: Path, batch: BatchPlan, evaluate: bool = False) -> SFTConfig:
    """`batch`: the batch and accumulation to train with (worker.batch_size); `evaluate`: there is a validation
    set, whose loss is computed every eval_steps, or at each epoch's end."""
    t = config.training
    dtype = compute_dtype(config.model.dtype)
    cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch.per_device_train_batch_size,
        per_device_eval_batch_size=batch.per_device_train_batch_size,
        eval_strategy=("steps" if t.eval_steps else "epoch") if evaluate else "no",
        eval_steps=t.eval_steps,
        gradient_accumulation_steps=batch.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        num_train_epochs=t.num_train_epochs,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        optim=optimizer(t.optim),
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        # SFTConfig turns bf16 on by default; on a CPU that is ~30x slower, so the dtype decides.
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda,
        max_length=config.model.max_seq_length,
        dataset_num_proc=None,
        # Resumable checkpoints (model, optimizer, scheduler, RNG) every save_steps; a shutdown saves one too.
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        # DDP (training.num_gpus > 1): every LoRA weight takes part in every step, no search for unused ones.
        ddp_find_unused_parameters=False,
    )
