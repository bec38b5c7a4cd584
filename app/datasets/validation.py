"""Checking dataset files row by row, with a report a person can fix the data from.

Every bad row is named by file, line, field and problem. The policy comes from the config's `dataset` section:
`invalid_rows: reject` refuses any bad row; `drop` trains without them as long as they are at most
`max_dropped_fraction` of a file. The same function runs when a job is submitted (422 with the report), on
`POST /api/training/datasets/validate`, and in the worker right before training.
"""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.datasets import formats
from app.datasets.encoding import Encoded, Markers, encode, render
from app.datasets.templates import ChatTemplate

# A report lists at most this many problems per file; the counts cover all of them.
MAX_LISTED = 100
# A conversation row is 4 levels deep; json.loads itself gives up near Python's recursion limit, mid-stack.
MAX_ROW_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_row(raw: bytes) -> Any:
    """One JSONL line as JSON data, or a RowProblem: not UTF-8, not JSON, nested too deeply, a number too long
    to read, or text with an unpaired surrogate (which no tokenizer or UTF-8 file can hold)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise formats.RowProblem("not_utf8", f"is not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise formats.RowProblem("not_json", f"is not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise formats.RowProblem("too_deep", f"is nested deeper than {MAX_ROW_DEPTH} levels") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise formats.RowProblem("number_too_long", f"has a number that cannot be read: {exc}") from None
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_ROW_DEPTH:
            raise formats.RowProblem("too_deep", f"is nested deeper than {MAX_ROW_DEPTH} levels")
        if isinstance(value, str) and _SURROGATE.search(value):
            raise formats.RowProblem(
                "invalid_text",
                "has text with an unpaired surrogate (\\ud800-\\udfff), which is not Unicode; fix "
                "the escape or drop the row",
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return data


class Problem(BaseModel):
    file: str = Field(description="The file, relative to the project.")
    line: int | None = Field(description="1-based line number in the file.")
    field: str | None = Field(description="The field at fault, as in the row: `conversations[2].role`, `output`.")
    code: str = Field(description="Stable reason: not_json, unknown_role, empty_content, duplicate, too_long, ...")
    message: str = Field(description="What is wrong, and what to do about it.")
    severity: Literal["error", "warning"] = Field(
        default="error", description="error: the row is bad; warning: the row is used, e.g. truncated."
    )

    def text(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field + ' ' if self.field else ''}{self.message}"


class FileReport(BaseModel):
    file: str = Field(description="The file, relative to the project.")
    param: str = Field(description="The config key that names it: dataset.path or dataset.val_path.")
    format: str | None = Field(description="The format read: sharegpt, sharegpt-from-value, openai or alpaca.")
    rows: int = Field(description="Non-blank lines.")
    used: int = Field(description="Rows that train (or evaluate).")
    bad: int = Field(description="Rows with an error; dropped or refused according to dataset.invalid_rows.")
    truncated: int = Field(description="Rows cut at model.max_seq_length (still used).")
    total_tokens: int | None = Field(description="Tokens of the used rows after templating and truncation.")
    mean_tokens: float | None = Field(description="total_tokens / used.")
    problems_total: int = Field(description="All problems found, errors and warnings.")
    problems: list[Problem] = Field(description=f"The first {MAX_LISTED} problems.")


class Report(BaseModel):
    ok: bool = Field(description="True when a job may train on these files.")
    message: str = Field(description="A summary a person can act on.")
    invalid_rows: Literal["reject", "drop"]
    max_dropped_fraction: float
    chat_template: str | None = Field(description="The template lengths were measured with.")
    max_seq_length: int
    lengths_checked: bool = Field(description="False when no tokenizer for the model was available here.")
    note: str | None = Field(default=None, description="Why lengths were not checked, if they were not.")
    files: list[FileReport]


@dataclass
class Row:
    line: int
    turns: list[dict[str, str]]
    encoded: Encoded | None = None


@dataclass
class FileResult:
    report: FileReport
    rows: list[Row] = field(default_factory=list)


@dataclass
class Rules:
    """The format and the policy rows are checked by, taken from a training config's dataset and model sections."""

    format: str = "auto"
    invalid_rows: Literal["reject", "drop"] = "reject"
    max_dropped_fraction: float = 0.05
    truncate_long_rows: bool = True
    max_seq_length: int = 2048

    @classmethod
    def of(cls, config: Any) -> Rules:
        d = config.dataset
        return cls(d.format, d.invalid_rows, d.max_dropped_fraction, d.truncate_long_rows, config.model.max_seq_length)


@dataclass
class TokenLengths:
    """A tokenizer and template to measure rows with; `chat_template` None uses the tokenizer's own."""

    tokenizer: Any
    template: ChatTemplate
    chat_template: str | None

    def __post_init__(self) -> None:
        self.markers = Markers.of(self.tokenizer, self.template)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


class _FileValidator:
    def __init__(
        self, shown: str, param: str, rules: Rules, template: ChatTemplate | None, lengths: TokenLengths | None
    ) -> None:
        self.shown, self.param, self.rules, self.lengths = shown, param, rules, lengths
        self.control = template.control_tokens if template else ()
        self.problems: list[Problem] = []
        self.bad_lines: set[int] = set()

    def problem(self, line: int | None, code: str, message: str, where: str | None = None, warn: bool = False) -> None:
        self.problems.append(
            Problem(
                file=self.shown,
                line=line,
                field=where,
                code=code,
                message=message,
                severity="warning" if warn else "error",
            )
        )
        if not warn and line is not None:
            self.bad_lines.add(line)

    def detect(self, path: Path) -> str | None:
        for _, raw in _lines(path):
            try:
                found = formats.detect(parse_row(raw))
            except formats.RowProblem:
                continue
            if found:
                return found
        return None

    def measure(self, row: Row) -> None:
        lengths, limit = self.lengths, self.rules.max_seq_length
        assert lengths is not None
        try:
            text = render(lengths.tokenizer, row.turns, lengths.chat_template)
        except Exception as exc:  # the template's own raise_exception, or a jinja error
            self.problem(row.line, "template_error", f"the {lengths.template.name} template refused it: {exc}")
            return
        encoded = encode(lengths.tokenizer, text, lengths.markers, limit)
        answers = sum(1 for turn in row.turns if turn["role"] == "assistant")
        if encoded.answers < answers:
            self.problem(
                row.line,
                "answer_not_found",
                f"after templating only {encoded.answers} of its {answers} answers can be found (an answer that "
                "starts with whitespace can merge into the template's marker); strip leading whitespace",
            )
        elif encoded.truncated and not self.rules.truncate_long_rows:
            self.problem(
                row.line,
                "too_long",
                f"is {encoded.length} tokens after templating, over model.max_seq_length={limit}; shorten it, "
                "raise max_seq_length, or set dataset.truncate_long_rows to true",
            )
        elif encoded.trained_tokens == 0:
            self.problem(
                row.line,
                "answer_truncated",
                f"is {encoded.length} tokens after templating and its first answer starts after model.max_seq_length"
                f"={limit}, so nothing would be learned; shorten the prompt or raise max_seq_length",
            )
        else:
            if encoded.truncated:
                self.problem(
                    row.line,
                    "truncated",
                    f"is {encoded.length} tokens after templating; it is cut to model.max_seq_length={limit}",
                    warn=True,
                )
            row.encoded = encoded

    def run(self, path: Path, seen_elsewhere: dict[str, tuple[str, int]]) -> tuple[FileResult, dict[str, int]]:
        fmt = self.rules.format
        how = "set by dataset.format"
        if fmt == "auto":
            fmt = self.detect(path) or ""
            how = "detected from its first readable row"
        seen: dict[str, int] = {}
        rows: list[Row] = []
        count = 0
        for number, raw in _lines(path):
            if not raw.strip():
                continue
            count += 1
            try:
                data = parse_row(raw)
            except formats.RowProblem as problem:
                self.problem(number, problem.code, problem.message)
                continue
            if not fmt:
                self.problem(
                    number,
                    "unknown_format",
                    "is in no known format; expected one of: " + ", ".join(formats.FORMATS) + " (see the README)",
                )
                continue
            try:
                converted = formats.convert(data, fmt)
                formats.check_order(converted)
            except formats.RowProblem as problem:
                message = problem.message
                if problem.code == "wrong_format":
                    message += f"; the file is read as {fmt} ({how})"
                self.problem(number, problem.code, message, problem.field)
                continue
            spelled = next(
                ((i, t) for i, turn in enumerate(converted.turns) for t in self.control if t in turn["content"]), None
            )
            if spelled is not None:
                i, token = spelled
                self.problem(
                    number,
                    "control_text",
                    f"contains {token!r}, which the tokenizer reads as the template's control token; remove it",
                    f"{converted.sources[i]}",
                )
                continue
            key = json.dumps(converted.turns, ensure_ascii=False, sort_keys=True)
            if key in seen:
                self.problem(number, "duplicate", f"is the same conversation as line {seen[key]}; remove one")
                continue
            if key in seen_elsewhere:
                other, line = seen_elsewhere[key]
                self.problem(
                    number,
                    "duplicate",
                    f"is the same conversation as {other} line {line}; evaluating on training rows hides overfitting",
                )
                continue
            seen[key] = number
            row = Row(number, converted.turns)
            if self.lengths is not None:
                self.measure(row)
                if number in self.bad_lines:
                    continue
            rows.append(row)
        encoded = [row.encoded for row in rows if row.encoded is not None]
        total = sum(len(e.input_ids) for e in encoded) if self.lengths else None
        report = FileReport(
            file=self.shown,
            param=self.param,
            format=fmt or None,
            rows=count,
            used=len(rows),
            bad=len(self.bad_lines),
            truncated=sum(1 for e in encoded if e.truncated),
            total_tokens=total,
            mean_tokens=round(total / len(rows), 1) if total is not None and rows else None,
            problems_total=len(self.problems),
            problems=self.problems[:MAX_LISTED],
        )
        return FileResult(report, rows), seen


def _verdict(report: FileReport, rules: Rules) -> str | None:
    """Why this file cannot be used, or None."""
    errors = [p for p in report.problems if p.severity == "error"]
    shown = "; ".join(p.text() for p in errors[:5])
    more = f" (and {report.bad - 5} more bad rows)" if report.bad > 5 else ""
    if report.rows == 0:
        return f"{report.file} ({report.param}) has no rows"
    if report.bad == 0:
        return None
    head = f"{report.bad} of {report.rows} rows in {report.file} are bad: {shown}{more}"
    if rules.invalid_rows == "reject":
        return (
            f'{head}. Fix them, or set dataset.invalid_rows to "drop" to train without them '
            f"(at most dataset.max_dropped_fraction={rules.max_dropped_fraction} of the rows)"
        )
    if report.used == 0:
        return f"{head}. No row is left to use"
    if report.bad > rules.max_dropped_fraction * report.rows:
        return (
            f"{head}. That is more than dataset.max_dropped_fraction={rules.max_dropped_fraction} of the rows; "
            "fix the data or raise the fraction"
        )
    return None


_gc_lock = threading.Lock()
_gc_holders = 0


@contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """The cyclic collector off while rows are checked. A large file is hundreds of thousands of new objects, none
    in a cycle (reference counting frees them); each full collection over them stopped every thread of the API,
    its event loop too, for up to a second."""
    global _gc_holders
    with _gc_lock:
        _gc_holders += 1
        if _gc_holders == 1:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.enable()


@dataclass
class Validated:
    report: Report
    results: dict[str, FileResult]  # by param


def validate_files(
    files: list[tuple[str, Path, str]],
    rules: Rules,
    template: ChatTemplate | None,
    lengths: TokenLengths | None,
    note: str | None = None,
) -> Validated:
    """Validate (param, path, shown name) files in order; a later file's rows are also compared with earlier ones."""
    results: dict[str, FileResult] = {}
    seen: dict[str, tuple[str, int]] = {}
    with _no_collector_pauses():
        for param, path, shown in files:
            result, keys = _FileValidator(shown, param, rules, template, lengths).run(path, seen)
            seen.update({key: (shown, line) for key, line in keys.items() if key not in seen})
            results[param] = result
    verdicts = [v for v in (_verdict(r.report, rules) for r in results.values()) if v]
    reports = [r.report for r in results.values()]
    if verdicts:
        message = " | ".join(verdicts)
    else:
        parts = []
        for r in reports:
            dropped = f", {r.bad} dropped" if r.bad else ""
            cut = f", {r.truncated} truncated" if r.truncated else ""
            tokens = f", {r.total_tokens} tokens" if r.total_tokens is not None else ""
            parts.append(f"{r.file}: {r.used} of {r.rows} rows used{dropped}{cut}{tokens}")
        message = "; ".join(parts)
    return Validated(
        Report(
            ok=not verdicts,
            message=message,
            invalid_rows=rules.invalid_rows,
            max_dropped_fraction=rules.max_dropped_fraction,
            chat_template=template.name if template else None,
            max_seq_length=rules.max_seq_length,
            lengths_checked=lengths is not None,
            note=note,
            files=reports,
        ),
        results,
    )


def check_test_rows(path: Path, shown: str, terms_field: str) -> list[Problem]:
    """The test split read as the baseline and evaluate steps read it (each row in the format its keys tell, its
    own expected terms a list of strings): every problem, by line; any one would fail those steps."""
    problems: list[Problem] = []
    rows = 0
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        rows += 1
        try:
            data = parse_row(raw)
            converted = formats.convert(data, formats.detect(data) or "sharegpt")
            formats.check_order(converted)
            terms = data.get(terms_field, [])
            if not isinstance(terms, list) or not all(isinstance(t, str) and t.strip() for t in terms):
                raise formats.RowProblem("invalid_terms", "must be a list of non-empty strings", terms_field)
        except formats.RowProblem as problem:
            problems.append(
                Problem(file=shown, line=number, field=problem.field, code=problem.code, message=problem.message)
            )
    if rows == 0:
        problems.append(
            Problem(file=shown, line=None, field=None, code="no_rows", message="has no rows to evaluate on")
        )
    return problems
