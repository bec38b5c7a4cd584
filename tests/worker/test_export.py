"""The quantization-verified gate, the checks made before training, and the llama.cpp steps on a tiny model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from transformers import OPTConfig

from app.models import GateStatus
from app.training_config import EvaluationSection
from worker import evaluation, export
from worker.gguf import ExportError, UnsupportedArchitecture
from worker.gguf.convert import check_tools, write_ggufs
from worker.gguf.tools import run_tool
from worker.gguf.verify import chrf, judge_files, quantization_gate, relative_drop, verify_ggufs


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


def test_a_supported_architecture_passes_the_check(tiny_model_dir: Path) -> None:
    assert check_tools(str(tiny_model_dir), "tiny") == "Gemma3ForCausalLM"


def test_an_architecture_the_converter_lacks_fails_before_any_work(tmp_path: Path) -> None:
    config = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
    config.save_pretrained(tmp_path / "anonymous")
    config.architectures = ["OPTForCausalLM"]
    config.save_pretrained(tmp_path / "opt")
    with pytest.raises(UnsupportedArchitecture) as info:
        check_tools(str(tmp_path / "opt"), "facebook/opt-tiny")
    assert info.value.code == "gguf_architecture_unsupported"
    assert "OPTForCausalLM" in str(info.value) and "save.gguf_path to null" in str(info.value)
    with pytest.raises(UnsupportedArchitecture, match="names no architecture"):
        check_tools(str(tmp_path / "anonymous"), "anonymous")


def test_test_examples_stop_before_the_last_answer(tmp_path: Path) -> None:
    rows = [
        {"conversations": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {
            "conversations": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ]
        },
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples = evaluation.read_test_split(path, "expected_terms")
    assert [(len(e.prompt), e.prompt[-1]["content"], e.reference) for e in examples] == [
        (1, "2+2?", "4"),
        (4, "Capital of France?", "Paris"),
    ]
    assert len(evaluation.load_test_set(path, EvaluationSection(max_examples=1))) == 1


def test_chrf_scores_identical_text_100_and_unrelated_text_low() -> None:
    assert chrf(["The capital is Paris."], ["The capital is Paris."]) == pytest.approx(100.0)
    assert chrf(["zzzz qqqq"], ["The capital is Paris."]) < 10


def test_tracker_spreads_progress_over_weighted_stages() -> None:
    seen: list[tuple[float, str]] = []
    tracker = export.Tracker.planned(lambda f, d: seen.append((f, d)), ["Q8_0", "Q4_K_M"], merging=False, scoring=[1])
    # Q8_0 and a temporary f16 converted (4 each), one quantize (1), the reference (3), two verifications (2 each).
    assert tracker.total == 4 + 4 + 1 + 3 + 2 * 2
    step = tracker.stage("convert", "converting")
    tracker.last_sent = 0.0
    step(0.5)
    tracker.stage("quantize", "quantizing")
    assert seen == [(0.0, "converting"), (0.125, "converting (50%)"), (0.25, "quantizing")]


def test_a_failing_tool_is_an_error_with_its_last_words() -> None:
    script = "import sys; print('loading'); print('Model Foo is not supported', file=sys.stderr); sys.exit(1)"
    with pytest.raises(ExportError) as info:
        run_tool([sys.executable, "-c", script], "the converter")
    assert "the converter failed (exit code 1)" in str(info.value)
    assert "Model Foo is not supported" in str(info.value)


def test_a_tool_stops_when_the_job_must(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    calls = []

    def check_stop() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise Stop

    with pytest.raises(Stop):
        run_tool([sys.executable, "-c", "import time; time.sleep(60)"], "sleep", check_stop=check_stop)


def test_tiny_model_to_gguf_loads_and_chats_in_llama_cpp(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The real converter, quantizer and llama.cpp on a 2-layer Gemma 3: a k-quant from a temporary f16."""
    reports: list[tuple[float, str]] = []
    tracker = export.Tracker.planned(lambda f, d: reports.append((f, d)), ["Q4_K_M"], merging=False, scoring=[])
    files = write_ggufs(tiny_model_dir, tmp_path / "quantized", ["Q4_K_M"], tracker)
    assert files == {"Q4_K_M": tmp_path / "quantized" / "model-Q4_K_M.gguf"}
    assert sorted(p.name for p in (tmp_path / "quantized").iterdir()) == ["model-Q4_K_M.gguf"]  # f16 removed
    assert files["Q4_K_M"].read_bytes()[:4] == b"GGUF"

    (checked,) = verify_ggufs(files, [], chrf, tracker, n_ctx=256, max_new_tokens=4)
    assert checked["loaded"] and checked["chat_template"] and checked["score"] is None
    # llama.cpp formats the prompt with the gemma-3 template embedded in the file: one <bos>, the model's turn.
    prompt = "<bos><start_of_turn>user\nWhat is 5 + 3?<end_of_turn>\n<start_of_turn>model\n"
    assert checked["sample"]["prompt"] == prompt
    assert reports[0][1] == "converting the merged model to GGUF f16"
    assert reports[-1][0] == 1.0 and [f for f, _ in reports] == sorted(f for f, _ in reports)
