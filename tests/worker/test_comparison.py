"""The no-regression gate, the flipped examples and the per-slice report, on real run folders' files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.files import write_json
from app.models import GateName, GateStatus
from app.run_folder import RunFolder
from app.training_config import GatesSection, TrainingConfig
from worker import comparison, evaluation
from worker.comparison import Scored

QUESTIONS = [("What is 2 + 2?", "4"), ("Where is Axim?", "Axim is in Ghana."), ("Name a coin.", "The cedi.")]


def scored(answers: list[str], questions: list[tuple[str, str]] = QUESTIONS, tags: list[str] | None = None) -> Scored:
    """A model's scoring of the questions with these answers, as the evaluate step writes it."""
    examples = [
        evaluation.TestExample([{"role": "user", "content": q}], a, [], tags[i] if tags else None)
        for i, (q, a) in enumerate(questions)
    ]
    metrics, rows = evaluation.score(examples, lambda prompts: answers[: len(prompts)], batch_size=8)
    return Scored(metrics, rows)


ACCEPTED = ["4", "Axim is in Ghana.", "gold"]  # right, right, wrong by exact match


def test_a_drop_beyond_max_regression_fails_and_counts_the_flips() -> None:
    gates = GatesSection(metric="exact_match", max_regression=0.1)
    worse = scored(["5", "Axim is in Ghana.", "The cedi."])  # right -> wrong, kept, wrong -> right: 2/3 -> 2/3
    assert comparison.no_regression("acc", scored(ACCEPTED), worse, gates).status == GateStatus.passed
    worst = scored(["5", "Accra.", "gold"])  # 2/3 -> 0
    result = comparison.no_regression("acc", scored(ACCEPTED), worst, gates)
    assert result.name == GateName.no_regression and result.status == GateStatus.failed
    assert result.details | {"drop": round(result.details["drop"], 6)} == {
        "metric": "exact_match",
        "accepted_job_id": "acc",
        "accepted": pytest.approx(2 / 3, abs=1e-5),
        "fine_tuned": 0.0,
        "drop": 1.0,
        "max_regression": 0.1,
        "right_to_wrong": 2,
        "wrong_to_right": 0,
    }
    assert "acc" in result.message and "2 answer(s) went right -> wrong" in result.message


def test_a_small_drop_within_max_regression_passes_and_lower_is_better_counts_up() -> None:
    gates = GatesSection(metric="test_loss", max_regression=0.05)
    accepted, current = scored(ACCEPTED), scored(ACCEPTED)
    accepted.metrics["test_loss"], current.metrics["test_loss"] = 2.0, 2.08  # 4% worse
    assert comparison.no_regression("acc", accepted, current, gates).status == GateStatus.passed
    current.metrics["test_loss"] = 2.2  # 10% worse
    assert comparison.no_regression("acc", accepted, current, gates).status == GateStatus.failed


def test_the_gate_is_skipped_with_the_reason() -> None:
    gates = GatesSection()
    mine = scored(ACCEPTED)
    none = comparison.no_regression(None, None, mine, gates)
    assert none.status == GateStatus.not_run and "no accepted model" in none.message
    missing = comparison.no_regression("acc", None, mine, gates)
    assert missing.status == GateStatus.not_run and "metrics/evaluation.json" in missing.message
    other_split = scored(ACCEPTED, [*QUESTIONS[:2], ("Name a coin!", "The cedi.")])
    skipped = comparison.no_regression("acc", other_split, mine, gates)
    assert skipped.status == GateStatus.not_run and "test split differs" in skipped.message
    assert other_split.digest != mine.digest == scored(["x", "y", "z"]).digest  # the answers do not count


@pytest.mark.parametrize(
    ("metric", "threshold", "flipped"),
    [
        # exact match: "The cedi" (no full stop) matches after normalization, "Axim is in Accra." does not
        ("exact_match", 0.5, {"right_to_wrong": [0, 1], "wrong_to_right": [2]}),
        # token F1 of "Axim is in Accra." against "Axim is in Ghana." is 0.75: right at 0.5, wrong at 0.8
        ("token_f1", 0.5, {"right_to_wrong": [0], "wrong_to_right": [2]}),
        ("token_f1", 0.8, {"right_to_wrong": [0, 1], "wrong_to_right": [2]}),
        # test_loss has no per-answer value: judged by token F1
        ("test_loss", 0.8, {"right_to_wrong": [0, 1], "wrong_to_right": [2]}),
    ],
)
def test_flips_follow_the_metric(metric: str, threshold: float, flipped: dict[str, list[int]]) -> None:
    current = scored(["5", "Axim is in Accra.", "The cedi"])
    found = comparison.flips(scored(ACCEPTED), current, GatesSection(metric=metric, right_threshold=threshold))
    assert {kind: [row["index"] for row in rows] for kind, rows in found.items()} == flipped
    first = found["right_to_wrong"][0]
    assert (first["accepted_answer"], first["answer"], first["reference"]) == ("4", "5", "4")
    assert first["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]


def write_run(root: Path, stage_answers: dict[str, list[str]], tags: list[str] | None = None) -> RunFolder:
    folder = RunFolder(root, TrainingConfig())
    for stage, answers in stage_answers.items():
        model = scored(answers, tags=tags)
        write_json(folder.metrics(stage), {"stage": stage, "metrics": model.metrics})  # type: ignore[arg-type]
        evaluation.write_samples(folder.samples, stage, model.rows)
    return folder


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def test_run_writes_the_comparison_and_the_slices(tmp_path: Path) -> None:
    tags = ["maths", "places", "money"]
    write_run(tmp_path / "runs" / "acc", {"evaluate": ACCEPTED})
    folder = write_run(tmp_path / "runs" / "new", {"baseline": ["", "", ""], "evaluate": ["5", "Accra.", "gold"]}, tags)
    gates = GatesSection(metric="exact_match", slice_field="category")

    result = comparison.run(gates, folder, "acc")
    assert result.status == GateStatus.failed
    report = read(folder.metrics_dir / "comparison.json")
    assert report["accepted_job_id"] == "acc" and report["examples"] == 3 and report["gate"]["status"] == "failed"
    assert [row["index"] for row in report["right_to_wrong"]] == [0, 1] and report["wrong_to_right"] == []
    assert report["right_to_wrong"][1] | {"accepted_exact_match": 1.0} == {
        "index": 1,
        "prompt": [{"role": "user", "content": "Where is Axim?"}],
        "reference": "Axim is in Ghana.",
        "accepted_answer": "Axim is in Ghana.",
        "answer": "Accra.",
        "accepted_exact_match": 1.0,
        "exact_match": 0.0,
        "slice": "places",
    }

    slices = read(folder.metrics_dir / "slices.json")
    assert slices["field"] == "category" and slices["models"] == ["baseline", "fine_tuned", "accepted"]
    assert list(slices["slices"]) == ["maths", "money", "places"]
    # The accepted job's rows carry no tags of their own: this job's tags are used for its answers too.
    places = slices["slices"]["places"]
    assert [places[m]["exact_match"] for m in ("baseline", "fine_tuned", "accepted")] == [0.0, 0.0, 1.0]
    assert places["accepted"]["examples"] == 1


def test_run_without_an_accepted_model_writes_no_comparison(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "runs" / "new", {"evaluate": ACCEPTED})
    result = comparison.run(GatesSection(slice_field="category"), folder, None)
    assert result.status == GateStatus.not_run and not (folder.metrics_dir / "comparison.json").exists()
    slices = read(folder.metrics_dir / "slices.json")  # untagged rows: one slice, the fine-tuned model alone
    assert slices["models"] == ["fine_tuned"] and list(slices["slices"]) == ["(none)"]
    # An accepted job whose files are gone is skipped with the reason, not an error.
    assert "no metrics/evaluation.json" in comparison.run(GatesSection(), folder, "gone").message
