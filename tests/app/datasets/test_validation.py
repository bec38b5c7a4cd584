"""Every input format read into the spec's ShareGPT turns, and every kind of bad row reported by file, line and
field, on real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.datasets.templates import TEMPLATES
from app.datasets.validation import Rules, TokenLengths, validate_files
from tests.conftest import stand_in_tokenizer

QA = [{"role": "user", "content": "What is 5 + 3?"}, {"role": "assistant", "content": "5 + 3 = 8."}]
WITH_SYSTEM = [{"role": "system", "content": "You are a tutor."}, *QA]


def write(path: Path, rows: list[Any]) -> Path:
    """One row per line; a str is written as it is (broken JSON, blank lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def run(path: Path, **settings: Any) -> Any:
    return validate_files([("dataset.path", path, path.name)], Rules(**settings), TEMPLATES["gemma-3"], None)


def problems(checked: Any) -> list[tuple[int | None, str | None, str]]:
    return [(p.line, p.field, p.code) for p in checked.report.files[0].problems]


def used(checked: Any) -> list[list[dict[str, str]]]:
    return [row.turns for row in checked.results["dataset.path"].rows]


def test_sharegpt_role_content(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl",
        [
            {"conversations": WITH_SYSTEM},
            "",
            "{not json",
            {"conversations": [{"role": "bot", "content": "x"}, QA[1]]},
            {"conversations": [QA[0], {"role": "assistant", "content": "   "}]},
            {"conversations": [QA[0]]},
            {"conversations": [QA[1], QA[0]]},
            {"conversations": [QA[0], QA[0], QA[1]]},
            {"conversations": [*QA, QA[0]]},
            {"conversations": []},
            {"conversations": WITH_SYSTEM},
            {"conversations": [QA[0], {"role": "assistant", "content": 5}]},
            {"conversations": [*QA, {"role": "system", "content": "late"}]},
            {"conversations": [QA[0], {"role": "assistant", "content": "use <end_of_turn> here"}]},
            {"messages": QA},
        ],
    )
    checked = run(path)
    assert used(checked) == [WITH_SYSTEM]
    assert problems(checked) == [
        (3, None, "not_json"),
        (4, "conversations[0].role", "unknown_role"),
        (5, "conversations[1].content", "empty_content"),
        (6, "conversations[0]", "no_assistant_turn"),
        (7, "conversations[0]", "roles_out_of_order"),
        (8, "conversations[1]", "roles_out_of_order"),
        (9, "conversations[2]", "ends_without_answer"),
        (10, "conversations", "empty_conversation"),
        (11, None, "duplicate"),
        (12, "conversations[1].content", "content_not_string"),
        (13, "conversations[2]", "roles_out_of_order"),
        (14, "conversations[1]", "control_text"),
        (15, None, "wrong_format"),
    ]
    report = checked.report
    assert not report.ok and report.files[0].rows == 14 and report.files[0].bad == 13
    assert report.files[0].format == "sharegpt"
    texts = {p.line: p.message for p in report.files[0].problems}
    assert texts[4] == "is 'bot'; expected one of assistant, system, user"
    assert texts[11] == "is the same conversation as line 1; remove one"
    assert "looks like openai" in texts[15] and "detected from its first readable row" in texts[15]
    assert report.message.startswith("13 of 14 rows in train.jsonl are bad: train.jsonl:3: is not JSON")
    assert 'set dataset.invalid_rows to "drop"' in report.message


def test_sharegpt_from_value(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "You are a tutor."},
                    *[{"from": "human", "value": "What is 5 + 3?"}, {"from": "gpt", "value": "5 + 3 = 8."}],
                ]
            },
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bing", "value": "Hello"}]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]},
            {"conversations": [{"role": "user", "content": "Hi"}]},
        ],
    )
    checked = run(path)
    assert checked.report.files[0].format == "sharegpt-from-value"
    assert used(checked) == [WITH_SYSTEM]
    assert problems(checked) == [
        (2, "conversations[1].from", "unknown_role"),
        (3, "conversations[1].value", "missing_field"),
        (4, None, "wrong_format"),
    ]


def test_openai_messages(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl",
        [
            {"messages": WITH_SYSTEM},
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 2?"}],
                    },
                    {"role": "assistant", "content": "4."},
                ]
            },
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, QA[1]]},
            {"messages": [QA[0], {"role": "tool", "content": "{}"}]},
        ],
    )
    checked = run(path)
    assert checked.report.files[0].format == "openai"
    assert used(checked) == [
        WITH_SYSTEM,
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
    ]
    assert problems(checked) == [
        (3, "messages[0].content[0]", "unsupported_content"),
        (4, "messages[1].role", "unknown_role"),
    ]


def test_alpaca_is_converted_exactly_as_the_spec_says(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl",
        [
            {"instruction": "You are a tutor.", "input": "What is 5 + 3?", "output": "5 + 3 = 8."},
            {"instruction": "", "input": "What is 5 + 3?", "output": "5 + 3 = 8.", "id": "df-2"},
            {"instruction": "Say hi.", "input": "", "output": "Hi"},
            {"instruction": "Say hi.", "input": "Hello"},
            {"instruction": "Say hi.", "input": "Hello", "output": ""},
            {"instruction": 3, "input": "Hello", "output": "Hi"},
        ],
    )
    checked = run(path)
    assert checked.report.files[0].format == "alpaca"
    assert used(checked) == [WITH_SYSTEM, QA]  # convert_to_sharegpt: instruction -> system, input -> user
    assert problems(checked) == [
        (3, "input", "no_user_turn"),
        (4, "output", "missing_field"),
        (5, "output", "empty_content"),
        (6, "instruction", "content_not_string"),
    ]


def test_named_format_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", [{"messages": QA}, {"conversations": QA}])
    checked = run(path, format="sharegpt")
    assert problems(checked) == [(1, None, "wrong_format")]
    assert "set by dataset.format" in checked.report.files[0].problems[0].message


def test_a_file_in_no_known_format(tmp_path: Path) -> None:
    checked = run(write(tmp_path / "train.jsonl", [{"question": "q", "answer": "a"}, "[1, 2]"]))
    assert problems(checked) == [(1, None, "unknown_format"), (2, None, "unknown_format")]
    assert checked.report.files[0].format is None


def test_invalid_utf8_is_a_row_problem(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps({"conversations": QA}).encode() + b"\n" + b'{"conversations": "\xff"}\n')
    assert problems(run(path)) == [(2, None, "not_utf8")]


def test_drop_policy_trains_without_bad_rows_up_to_the_limit(tmp_path: Path) -> None:
    good = [
        {"conversations": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(19)
    ]
    path = write(tmp_path / "train.jsonl", [*good, "{broken"])
    assert not run(path).report.ok  # reject by default
    dropped = run(path, invalid_rows="drop", max_dropped_fraction=0.05)
    assert dropped.report.ok and dropped.report.files[0].used == 19 and dropped.report.files[0].bad == 1
    assert dropped.report.message == "train.jsonl: 19 of 20 rows used, 1 dropped"
    too_many = run(path, invalid_rows="drop", max_dropped_fraction=0.04)
    assert not too_many.report.ok and "more than dataset.max_dropped_fraction=0.04" in too_many.report.message


def test_validation_rows_repeating_training_rows_are_reported(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [{"conversations": QA}, {"conversations": WITH_SYSTEM}])
    val = write(
        tmp_path / "val.jsonl",
        [{"instruction": "You are a tutor.", "input": QA[0]["content"], "output": QA[1]["content"]}],
    )
    checked = validate_files(
        [("dataset.path", train, "train.jsonl"), ("dataset.val_path", val, "val.jsonl")],
        Rules(),
        TEMPLATES["gemma-3"],
        None,
    )
    problem = checked.report.files[1].problems[0]
    assert (problem.file, problem.line, problem.code) == ("val.jsonl", 1, "duplicate")
    assert "same conversation as train.jsonl line 2" in problem.message


@pytest.fixture(scope="module")
def gemma(tokenizer_dir: Path) -> TokenLengths:
    tokenizer = stand_in_tokenizer(tokenizer_dir, "gemma-3")
    return TokenLengths(tokenizer, TEMPLATES["gemma-3"], TEMPLATES["gemma-3"].jinja)


def test_lengths_after_templating(tmp_path: Path, gemma: TokenLengths) -> None:
    long_answer = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "one two " * 40}]
    long_prompt = [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]
    path = write(
        tmp_path / "train.jsonl",
        [{"conversations": QA}, {"conversations": long_answer}, {"conversations": long_prompt}],
    )
    cut = validate_files([("dataset.path", path, "train.jsonl")], Rules(max_seq_length=32), TEMPLATES["gemma-3"], gemma)
    report = cut.report.files[0]
    assert [(p.line, p.code, p.severity) for p in report.problems] == [
        (2, "truncated", "warning"),
        (3, "answer_truncated", "error"),
    ]
    assert report.used == 2 and report.truncated == 1 and report.bad == 1
    rows = cut.results["dataset.path"].rows
    assert report.total_tokens == sum(len(r.encoded.input_ids) for r in rows if r.encoded) == 27 + 32
    assert report.mean_tokens == 29.5  # QA is 27 tokens once templated; the long answer is cut to 32
    strict = validate_files(
        [("dataset.path", path, "train.jsonl")],
        Rules(max_seq_length=32, truncate_long_rows=False),
        TEMPLATES["gemma-3"],
        gemma,
    )
    assert [(p.line, p.code) for p in strict.report.files[0].problems] == [(2, "too_long"), (3, "too_long")]
    assert "over model.max_seq_length=32" in strict.report.files[0].problems[0].message
