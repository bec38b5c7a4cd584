"""The export's progress over its stages, and the llama.cpp steps on a tiny model."""

from __future__ import annotations

from pathlib import Path

from worker import export
from worker.gguf.convert import write_ggufs
from worker.gguf.verify import chrf, verify_ggufs


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
