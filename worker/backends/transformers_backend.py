"""transformers + PEFT + TRL: the backend for CPUs, and for GPUs without Unsloth."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.datasets import templates
from app.datasets.templates import ChatTemplate
from app.training_config import TrainingConfig
from worker.backends.common import sft_trainer, target_modules
from worker.data import Prepared
from worker.devices import compute_dtype
from worker.export import merge_lora

log = logging.getLogger("forge.worker")


class TransformersBackend:
    name = "transformers"

    def load_model(self, model_path: str, config: TrainingConfig, template: ChatTemplate) -> tuple[Any, Any]:
        dtype = compute_dtype(config.model.dtype)
        kwargs: dict[str, Any] = {"dtype": dtype}
        self.quantized = False
        if config.model.load_in_4bit:
            if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=dtype,
                )
                self.quantized = True
            else:
                log.info("load_in_4bit needs CUDA and bitsandbytes; loading %s in %s instead", model_path, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        templates.install(tokenizer, template)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def attach_lora(self, model: Any, config: TrainingConfig) -> Any:
        lora = config.lora
        checkpointing = lora.use_gradient_checkpointing is not False
        if self.quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
        elif checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(config.training.seed)
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=target_modules(config),
            bias=lora.bias,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, peft_config)

    def prepare_data(self, data: Prepared) -> tuple[Any, Any | None]:
        # Labels are computed here (app.datasets.encoding), by the rule Unsloth's train_on_responses_only uses.
        def dataset(rows: list[Any]) -> Dataset:
            return Dataset.from_list([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])

        return dataset(data.train), dataset(data.eval) if data.eval else None

    def make_trainer(
        self, model: Any, tokenizer: Any, dataset: Any, args: Any, callbacks: list[Any], eval_dataset: Any = None
    ) -> Any:
        return sft_trainer(model, tokenizer, dataset, args, callbacks, eval_dataset)

    def for_inference(self, model: Any) -> None:
        model.eval()

    def for_training(self, model: Any, config: TrainingConfig) -> None:
        model.train()

    def save_lora(self, model: Any, tokenizer: Any, path: str) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    def save_merged(self, model: Any, tokenizer: Any, path: str, model_path: str, lora_path: str) -> None:
        merge_lora(model_path, Path(lora_path), Path(path), tokenizer)
