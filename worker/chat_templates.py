"""Which chat template a job uses, and installing it on a tokenizer; the templates are in app.datasets.templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.datasets.check import template_name
from app.datasets.templates import GEMMA_3, TEMPLATES, ChatTemplate
from app.training_config import TrainingConfig

__all__ = ["GEMMA_3", "TEMPLATES", "ChatTemplate", "for_job", "install", "unsloth_argument"]


def for_job(config: TrainingConfig, model_path: str) -> ChatTemplate:
    """dataset.chat_template, or the one inferred from the model, exactly as the API inferred it."""
    folder = Path(model_path)
    return TEMPLATES[template_name(config, folder if (folder / "config.json").is_file() else None)]


def install(tokenizer: Any, template: ChatTemplate) -> Any:
    """The transformers way: the template string on the tokenizer (saved with the adapters and merged model)."""
    tokenizer.chat_template = template.jinja
    return tokenizer


def unsloth_argument(template: ChatTemplate) -> str | tuple[str, str]:
    """What to give Unsloth's get_chat_template so it installs the same string (see app.datasets.templates)."""
    return template.unsloth_name or (template.jinja, template.stop_word)
