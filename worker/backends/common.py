"""What both backends share: the LoRA target modules."""

from __future__ import annotations

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
