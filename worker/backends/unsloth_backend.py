"""Unsloth (4-bit QLoRA on CUDA), following the spec's steps 2-7. The only module that imports Unsloth."""

from __future__ import annotations

from typing import Any

import unsloth  # noqa: F401  (must come before transformers, trl and peft: it patches them)
from datasets import Dataset
from trl import SFTTrainer
from unsloth import FastModel
from unsloth.chat_templates import get_chat_template, train_on_responses_only

from app.training_config import TrainingConfig
from worker.backends.common import compute_dtype, target_modules, token_stats
from worker.chat_templates import TURN_MARKERS


class UnslothBackend:
    name = "unsloth"

    def __init__(self) -> None:
        self.data_stats: dict[str, Any] = {}
        self.chat_template = "gemma-3"

    def load_model(self, model_path: str, config: TrainingConfig) -> tuple[Any, Any]:
        model, tokenizer = FastModel.from_pretrained(
            model_name=model_path,
            max_seq_length=config.model.max_seq_length,
            dtype=None if config.model.dtype is None else compute_dtype(config),
            load_in_4bit=config.model.load_in_4bit,
        )
        self.chat_template = config.dataset.chat_template
        return model, get_chat_template(tokenizer, chat_template=config.dataset.chat_template)

    def attach_lora(self, model: Any, config: TrainingConfig) -> Any:
        lora = config.lora
        return FastModel.get_peft_model(
            model,
            r=lora.r,
            target_modules=target_modules(config),
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            bias=lora.bias,
            use_gradient_checkpointing=lora.use_gradient_checkpointing,
            random_state=config.training.seed,
            finetune_vision_layers=lora.finetune_vision_layers,
            finetune_language_layers=lora.finetune_language_layers,
            finetune_attention_modules=lora.finetune_attention_modules,
            finetune_mlp_modules=lora.finetune_mlp_modules,
        )

    def prepare_data(self, tokenizer: Any, conversations: list[list[dict[str, str]]], config: TrainingConfig) -> Any:
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False).removeprefix("<bos>")
            for c in conversations
        ]
        limit = config.model.max_seq_length
        lengths = [len(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
        rows = [{"tokens": min(n, limit), "truncated": n > limit} for n in lengths]
        self.data_stats = token_stats(rows, dropped=0)
        return Dataset.from_dict({config.dataset.text_field: texts})

    def make_trainer(self, model: Any, tokenizer: Any, dataset: Any, args: Any, callbacks: list[Any]) -> Any:
        args.dataset_text_field = dataset.column_names[0]
        trainer = SFTTrainer(
            model=model, processing_class=tokenizer, train_dataset=dataset, args=args, callbacks=callbacks
        )
        return train_on_responses_only(trainer, **TURN_MARKERS[self.chat_template])

    def for_inference(self, model: Any) -> None:
        # Unsloth's inference mode: fast generation kernels, left padding, logits returned.
        FastModel.for_inference(model)

    def for_training(self, model: Any, config: TrainingConfig) -> None:
        FastModel.for_training(model, use_gradient_checkpointing=config.lora.use_gradient_checkpointing is not False)

    def save_lora(self, model: Any, tokenizer: Any, path: str) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    def save_merged(self, model: Any, tokenizer: Any, path: str, model_path: str, lora_path: str) -> None:
        model.save_pretrained_merged(path, tokenizer, save_method="merged_16bit")
