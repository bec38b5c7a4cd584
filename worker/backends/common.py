"""What both backends share: the LoRA target modules and the trainer."""

from __future__ import annotations

from typing import Any

from app.training_config import TrainingConfig


def target_modules(config: TrainingConfig) -> list[str]:
    """The configured modules, less those the finetune_* switches turn off."""
    return config.lora.trained_modules


def sft_trainer(
    model: Any, tokenizer: Any, dataset: Any, args: Any, callbacks: list[Any], eval_dataset: Any = None
) -> Any:
    """TRL's SFTTrainer on the prepared token ids (imported here, after Unsloth where it runs: it patches TRL)."""
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        args=args,
        callbacks=callbacks,
    )
