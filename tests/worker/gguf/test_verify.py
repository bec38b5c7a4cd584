"""The quantization-verified gate: each GGUF's verdict and the gate over them; the chrF metric."""

from __future__ import annotations

import math

import pytest

from app.models import GateStatus
from worker.gguf.verify import chrf, judge_files, quantization_gate, relative_drop


def _file(quantization: str, score: float | None, size: int = 1000, **extra: object) -> dict[str, object]:
    return {"quantization": quantization, "bytes": size, "loaded": True, "chat_template": True, "score": score, **extra}


def _gate(
    reference: float | None, files: list[dict[str, object]], max_drop: float = 0.05, max_bytes: int | None = None
) -> tuple[object, list[dict[str, object]]]:
    verdicts = judge_files(reference, files, max_drop=max_drop, max_bytes=max_bytes)
    return quantization_gate(reference, verdicts, max_drop=max_drop), verdicts


def test_gate_passes_files_within_the_drop_and_the_size() -> None:
    gate, verdicts = _gate(40.0, [_file("Q8_0", 39.9), _file("Q4_K_M", 38.0)], max_drop=0.05, max_bytes=1000)
    assert (gate.name.value, gate.status) == ("quantization-verified", GateStatus.passed)
    assert gate.details["status"] == "passed" and gate.details["reference_score"] == 40.0
    assert [(f["relative_drop"], f["passed"], f["reasons"]) for f in verdicts] == [
        (0.0025, True, []),
        (0.05, True, []),  # exactly at the limit still passes: "within 5%"
    ]


def test_gate_fails_each_file_for_its_own_reasons() -> None:
    gate, verdicts_list = _gate(
        40.0,
        [
            _file("Q8_0", 40.5),  # better than the merged model: a negative drop
            _file("Q5_K_M", 37.0),  # 7.5% lower
            _file("f16", 40.0, size=2000),  # too big
            {"quantization": "Q4_K_M", "bytes": 10, "loaded": False, "error": "GGML_ASSERT failed", "score": None},
            _file("bf16", 40.0, chat_template=False),
        ],
        max_drop=0.05,
        max_bytes=1500,
    )
    assert gate.status == GateStatus.failed and gate.details["status"] == "failed"
    verdicts = {f["quantization"]: f for f in verdicts_list}
    assert verdicts["Q8_0"]["passed"] is True and verdicts["Q8_0"]["relative_drop"] == -0.0125
    assert "7.5% lower, over the 5% limit" in verdicts["Q5_K_M"]["reasons"][0]
    assert "2,000 bytes, over save.max_gguf_bytes=1,500" in verdicts["f16"]["reasons"][0]
    assert "could not load it: GGML_ASSERT failed" in verdicts["Q4_K_M"]["reasons"][0]
    assert "no chat template" in verdicts["bf16"]["reasons"][0]
    assert [v["passed"] for v in verdicts.values()] == [True, False, False, False, False]


def test_gate_is_not_run_without_a_reference_but_still_fails_what_it_can_check() -> None:
    unscored, verdicts = _gate(None, [_file("Q8_0", None)], max_bytes=None)
    assert (unscored.status, verdicts[0]["passed"]) == (GateStatus.not_run, None)
    assert "no test split to score the GGUF files on" in unscored.message
    too_big, _ = _gate(None, [_file("Q8_0", None, size=5)], max_bytes=4)
    assert too_big.status == GateStatus.failed


def test_relative_drop() -> None:
    assert relative_drop(50.0, 45.0) == pytest.approx(0.1)
    assert relative_drop(0.0, 0.0) == 0.0
    assert math.isinf(relative_drop(0.0, -1.0))


def test_chrf_scores_identical_text_100_and_unrelated_text_low() -> None:
    assert chrf(["The capital is Paris."], ["The capital is Paris."]) == pytest.approx(100.0)
    assert chrf(["zzzz qqqq"], ["The capital is Paris."]) < 10


def test_a_file_rambles_only_where_the_merged_model_ended_its_turn() -> None:
    """Cut at the limit where the merged model was cut too is a long answer, not a rambling file."""
    ended = {"end_of_turn": "<|im_end|>", "end_of_turn_stops": True, "max_new_tokens": 64}
    files = [
        _file("Q8_0", 40.0, ended_turn=[True, False, True], **ended),  # prompt 1: both ran to the limit
        _file("Q4_K_M", 40.0, ended_turn=[True, False, False], **ended),
    ]
    verdicts = judge_files(40.0, files, reference_ended=[True, False, True])
    assert [(v["passed"], v["rambled"]) for v in verdicts] == [(True, []), (False, [2])]
    assert verdicts[1]["reasons"] == [
        "rambles past the end of its turn: 1 of 2 answers the fine-tuned model ended within 64 new tokens ran to that "
        "limit here without <|im_end|> (prompts 2)"
    ]
    # No reference turns (no test split): recorded, not judged.
    assert judge_files(None, files[1:])[0]["rambled"] == []
