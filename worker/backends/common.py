"""What both backends share: the LoRA target modules and the trainer."""

from __future__ import annotations

from typing import Any

from app.training_config import TrainingConfig

ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}


def target_modules(config: TrainingConfig) -> list[str]:
    """The configured modules, less those the finetune_* switches turn off."""
    lora = config.lora
    chosen = []
    for name in lora.target_modules:
        if name in ATTENTION and not lora.finetune_attention_modules:
            continue
        if name in MLP and not lora.finetune_mlp_modules:
            continue
        chosen.append(name)
    return chosen


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
