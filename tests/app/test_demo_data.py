"""The bundled demo dataset: deterministic, no question in two splits, a glossary of its local terms."""

from __future__ import annotations

import json
from pathlib import Path

from app.demo_data import SIZES, glossary, write_splits


def read_sharegpt(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line)["conversations"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_splits_are_deterministic_and_disjoint(tmp_path: Path) -> None:
    first = write_splits(tmp_path / "a" / "data")
    second = write_splits(tmp_path / "b" / "data")
    questions = {}
    for name, size in zip(("train", "val", "test"), SIZES, strict=True):
        assert first[name].read_bytes() == second[name].read_bytes()
        rows = read_sharegpt(first[name])
        assert len(rows) == size
        questions[name] = {row[-2]["content"] for row in rows}
        assert len(questions[name]) == size
    assert not (questions["train"] & questions["test"]) and not (questions["train"] & questions["val"])
    assert json.loads(first["glossary"].read_text(encoding="utf-8")) == glossary()


def test_every_test_answer_uses_local_terms(tmp_path: Path) -> None:
    from worker.metrics import expected_terms

    test = read_sharegpt(write_splits(tmp_path / "data")["test"])
    assert all(expected_terms(row[-1]["content"], glossary()) for row in test)
