"""A training config's data, checked: which files, which chat template, and the validation report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import InvalidInput
from app.datasets import templates, tokenizers
from app.datasets.templates import ChatTemplate
from app.datasets.validation import Checked, Lengths, Report, Rules, check
from app.files import expand_home
from app.training_config import TrainingConfig


def in_project(value: str, param: str, project: Path) -> Path:
    """`value` resolved against the project (symlinks followed); it must stay inside."""
    resolved = (project / expand_home(value)).resolve()
    if not resolved.is_relative_to(project):
        raise InvalidInput(
            f"{param} {value!r} resolves to {resolved}, outside the project directory {project}; use a path inside it",
            code="path_outside_project",
            param=param,
        )
    return resolved


def files(config: TrainingConfig, project: Path) -> list[tuple[str, Path, str]]:
    """(config key, path, path shown to people) of the training file and of the validation file, if any."""
    project = project.resolve()
    train = in_project(config.dataset.path, "dataset.path", project)
    if not train.is_file():
        raise InvalidInput(
            f"dataset.path {config.dataset.path!r} does not exist (looked for {train}); run Phase 3 (split) "
            "first, upload a file with POST /api/training/datasets, or give a JSONL path relative to the project",
            code="dataset_not_found",
            param="dataset.path",
        )
    chosen = [("dataset.path", train, str(train.relative_to(project)))]
    val_path = config.dataset.val_path
    if val_path == "auto":
        val = train.parent / "val.jsonl"
        if val.is_file() and val != train:
            chosen.append(("dataset.val_path", val, str(val.relative_to(project))))
    elif val_path is not None:
        val = in_project(val_path, "dataset.val_path", project)
        if not val.is_file():
            raise InvalidInput(
                f"dataset.val_path {val_path!r} does not exist (looked for {val}); give an existing JSONL, "
                '"auto" (the val.jsonl beside dataset.path, if any) or null for no evaluation',
                code="dataset_not_found",
                param="dataset.val_path",
            )
        chosen.append(("dataset.val_path", val, str(val.relative_to(project))))
    return chosen


def template_name(config: TrainingConfig, model_dir: Path | None) -> str:
    """dataset.chat_template, or the one the model's name or folder tells."""
    name = config.dataset.chat_template or templates.infer(config.model.name, model_dir)
    if name is None:
        raise InvalidInput(
            f"cannot tell which chat template model {config.model.name!r} uses; set dataset.chat_template to one "
            f"of {', '.join(templates.NAMES)}",
            code="chat_template_unknown",
            param="dataset.chat_template",
        )
    return name


@dataclass
class Measure:
    """What rows are measured with: the template, and the model's tokenizer when the API has it."""

    template: ChatTemplate
    lengths: Lengths | None
    note: str | None


def measure(model: str, template: str, project: Path, model_dirs: list[Path], cache_dir: Path) -> Measure:
    chosen = templates.TEMPLATES[template]
    tokenizer, note = tokenizers.for_model(model, project, model_dirs, cache_dir)
    lengths = Lengths(tokenizer, chosen, chosen.jinja) if tokenizer is not None else None
    return Measure(chosen, lengths, note)


def for_config(config: TrainingConfig, project: Path, model_dirs: list[Path], cache_dir: Path) -> Checked:
    """The API's check of a config's data: every row, and lengths too when the model's tokenizer is here."""
    project = project.resolve()
    chosen = files(config, project)
    name = template_name(config, tokenizers.model_folder(config.model.name, project, model_dirs))
    m = measure(config.model.name, name, project, model_dirs, cache_dir)
    with tokenizers.LOCK:
        return check(chosen, Rules.of(config), m.template, m.lengths, m.note)


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
