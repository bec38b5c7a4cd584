"""Unsloth (4-bit QLoRA on CUDA), following the spec's steps 2-7. The only module that imports Unsloth."""

from __future__ import annotations

from typing import Any

import unsloth  # noqa: F401  (must come before transformers, trl and peft: it patches them)
from datasets import Dataset
from unsloth import FastModel
from unsloth.chat_templates import get_chat_template, train_on_responses_only

from app.datasets import templates
from app.datasets.templates import ChatTemplate
from app.training_config import TrainingConfig
from worker import ranks
from worker.backends.common import sft_trainer, target_modules
from worker.data import Prepared
from worker.devices import compute_dtype


class UnslothBackend:
    name = "unsloth"

    def __init__(self) -> None:
        self.template = templates.TEMPLATES["gemma-3"]

    def load_model(self, model_path: str, config: TrainingConfig, template: ChatTemplate) -> tuple[Any, Any]:
        model, tokenizer = FastModel.from_pretrained(
            model_name=model_path,
            max_seq_length=config.model.max_seq_length,
            dtype=None if config.model.dtype is None else compute_dtype(config.model.dtype),
            load_in_4bit=config.model.load_in_4bit,
            device_map=ranks.device_map(),  # with several DDP ranks, each loads onto its own GPU
        )
        self.template = template
        return model, self.install_template(tokenizer)

    def install_template(self, tokenizer: Any) -> Any:
        """Unsloth's get_chat_template, installing the same template string the transformers backend uses."""
        return get_chat_template(tokenizer, chat_template=templates.unsloth_argument(self.template))

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

    def prepare_data(self, data: Prepared) -> tuple[Any, Any | None]:
        # The same token ids as the transformers backend; the labels come from train_on_responses_only below.
        def dataset(rows: list[Any]) -> Dataset:
            return Dataset.from_list([{"input_ids": r.input_ids} for r in rows])

        return dataset(data.train), dataset(data.eval) if data.eval else None

    def make_trainer(
        self, model: Any, tokenizer: Any, dataset: Any, args: Any, callbacks: list[Any], eval_dataset: Any = None
    ) -> Any:
        trainer = sft_trainer(model, tokenizer, dataset, args, callbacks, eval_dataset)
        return train_on_responses_only(
            trainer, instruction_part=self.template.instruction_part, response_part=self.template.response_part
        )

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
