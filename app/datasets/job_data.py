"""A job's data, validated: the rows of the files its config resolves to, and the 422 when they cannot train."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import InvalidInput
from app.datasets import tokenizers
from app.datasets.templates import ChatTemplate
from app.datasets.validation import Report, Rules, TokenLengths, Validated, validate_files
from app.resolve import ModelSource, Resolved
from app.training_config import TrainingConfig


@dataclass
class Measure:
    """What rows are measured with: the template, and the model's tokenizer when the API has it."""

    template: ChatTemplate
    lengths: TokenLengths | None
    note: str | None  # why lengths are not measured, when they are not


def measure(model: ModelSource, template: ChatTemplate, cache_dir: Path) -> Measure:
    tokenizer, note = tokenizers.for_model(model, cache_dir)
    lengths = TokenLengths(tokenizer, template, template.jinja) if tokenizer is not None else None
    return Measure(template, lengths, note)


def validate(config: TrainingConfig, resolved: Resolved, cache_dir: Path) -> Validated:
    """The API's check of a job's data: every row, and lengths too when the model's tokenizer is here."""
    m = measure(resolved.model, resolved.template, cache_dir)
    with tokenizers.LOCK:
        return validate_files(resolved.data_files(), Rules.of(config), m.template, m.lengths, m.note)


def as_error(report: Report) -> InvalidInput:
    """The 422 for data that cannot be trained on: the report's summary, and one detail per bad row listed."""
    at_fault = next((f for f in report.files if f.bad or not f.rows), report.files[0])
    details: list[dict[str, Any]] = [
        {
            "param": f.param,
            "message": problem.text(),
            "type": problem.code,
            "file": problem.file,
            "line": problem.line,
            "field": problem.field,
        }
        for f in report.files
        for problem in f.problems
        if problem.severity == "error"
    ]
    return InvalidInput(report.message, code="dataset_invalid", param=at_fault.param, details=details or None)
