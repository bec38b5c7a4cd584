"""The data a job trains on: its files validated and templated, token ids with assistant-only labels.

Validation is the API's (app.datasets), run again here with the backend's own tokenizer and template, so a
file changed after submission, or a model whose tokenizer the API did not have, is still checked before a
single step. Both backends train on the token ids made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.datasets.encoding import Encoded
from app.datasets.templates import ChatTemplate
from app.datasets.validation import FileReport, Rules, TokenLengths, validate_files
from app.training_config import TrainingConfig


class DataError(ValueError):
    """A dataset a person must fix; the message names the file, line and field."""

    code = "dataset_invalid"


@dataclass
class Prepared:
    train: list[Encoded]
    eval: list[Encoded] | None
    stats: dict[str, Any]


def _counts(report: FileReport) -> dict[str, Any]:
    return {
        "file": report.file,
        "format": report.format,
        "examples": report.used,
        "dropped": report.bad,
        "truncated": report.truncated,
        "total_tokens": report.total_tokens,
        "mean_tokens": report.mean_tokens,
    }


def prepare(
    tokenizer: Any, template: ChatTemplate, config: TrainingConfig, files: list[tuple[str, Path, str]]
) -> Prepared:
    """`files` (app.resolve: the training and validation files) validated, templated (with the template
    installed on `tokenizer`) and tokenized: train and eval rows."""
    checked = validate_files(files, Rules.of(config), template, TokenLengths(tokenizer, template, chat_template=None))
    if not checked.report.ok:
        raise DataError(checked.report.message)
    train = checked.results["dataset.path"]
    val = checked.results.get("dataset.val_path")
    stats = {"chat_template": template.name, **_counts(train.report)}
    stats["eval"] = _counts(val.report) if val else None
    return Prepared(
        train=[row.encoded for row in train.rows if row.encoded is not None],
        eval=[row.encoded for row in val.rows if row.encoded is not None] if val else None,
        stats=stats,
    )
