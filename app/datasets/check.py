"""A training config's data, checked: which files, which chat template, and the validation report."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import InvalidInput
from app.datasets import store, templates, tokenizers, validation
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


def test_split(path: Path, shown: str, terms_field: str) -> None:
    """422 naming each bad line of the test split (evaluation.test_path), before the job is queued."""
    problems = validation.check_test_rows(path, shown, terms_field)
    if not problems:
        return
    listed = "; ".join(p.text() for p in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise InvalidInput(
        f"evaluation.test_path {shown}: {len(problems)} bad row(s), which the baseline and evaluate steps cannot "
        f"score: {listed}{more}. Fix them, or set evaluation.baseline and evaluation.evaluate to false",
        code="test_set_invalid",
        param="evaluation.test_path",
        details=[
            {
                "param": "evaluation.test_path",
                "message": p.text(),
                "type": p.code,
                "file": p.file,
                "line": p.line,
                "field": p.field,
            }
            for p in problems[: validation.MAX_LISTED]
        ],
    )


@dataclass
class UploadChecked:
    report: Report
    splits: dict[str, Path] | None  # staged split files, by split name, when the report is ok and a split was asked
    split_rows: dict[str, int] | None


def upload(
    staged: Path,
    shown: str,
    rules: Rules,
    model: str,
    template: str,
    dirs: tuple[Path, list[Path], Path],
    split: tuple[tuple[float, float, float], int] | None,
) -> UploadChecked:
    """An upload's rows checked, and its splits staged when it passes; runs in the validation process (`in_child`).
    `dirs`: the project, FORGE_MODEL_DIRS and the cache; `split`: the shares and the seed."""
    project, model_dirs, cache_dir = dirs
    m = measure(model, template, project, model_dirs, cache_dir)
    with tokenizers.LOCK:
        checked = check([("dataset.path", staged, shown)], rules, m.template, m.lengths, m.note)
    if not checked.report.ok or split is None:
        return UploadChecked(checked.report, None, None)
    turns = [row.turns for row in checked.results["dataset.path"].rows]
    parts = store.split(turns, *split)
    return UploadChecked(checked.report, store.stage_splits(project, parts), {k: len(v) for k, v in parts.items()})


def load_tokenizer(model: str, project: Path, model_dirs: list[Path], cache_dir: Path) -> None:
    """Load a model's tokenizer into this process; `in_child(load_tokenizer, ...)` readies the validation process."""
    tokenizers.for_model(model, project, model_dirs, cache_dir)


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def in_child(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in the API's validation process. Checking a large file is seconds of CPU that, in a thread of
    the API process, held the interpreter lock (and the collector's pauses) against every other request."""
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn: the API process has threads (the event loop, the pool); forking it could copy a held lock.
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool = _pool
    return pool.submit(fn, *args).result()
