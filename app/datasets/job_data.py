"""A job's data, validated: the rows of the files its config resolves to, and the 422 when they cannot train."""

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
from app.datasets.validation import Report, Rules, TokenLengths, Validated, validate_files
from app.resolve import ModelSource, Resolved, model_source
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
    m = measure(model_source(model, project, model_dirs), templates.TEMPLATES[template], cache_dir)
    with tokenizers.LOCK:
        checked = validate_files([("dataset.path", staged, shown)], rules, m.template, m.lengths, m.note)
    if not checked.report.ok or split is None:
        return UploadChecked(checked.report, None, None)
    turns = [row.turns for row in checked.results["dataset.path"].rows]
    parts = store.split(turns, *split)
    return UploadChecked(checked.report, store.stage_splits(project, parts), {k: len(v) for k, v in parts.items()})


def rows_only(staged: Path, shown: str, note: str) -> Report:
    """A file's rows checked for format and content, with no model to measure lengths (`note` says when they
    are); runs in the validation process (`in_child`)."""
    return validate_files([("file", staged, shown)], Rules(), None, None, note).report


def load_tokenizer(model: str, project: Path, model_dirs: list[Path], cache_dir: Path) -> None:
    """Load a model's tokenizer into this process; `in_child(load_tokenizer, ...)` readies the validation process."""
    tokenizers.for_model(model_source(model, project, model_dirs), cache_dir)


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
