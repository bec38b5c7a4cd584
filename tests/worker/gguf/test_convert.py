"""The check made before training (which architectures llama.cpp's converter can write), and GGUF files written
beside the evaluate step."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import OPTConfig

from worker.gguf import ExportError, UnsupportedArchitecture, never_stop
from worker.gguf.convert import check_tools
from worker.gguf.early import EarlyGguf


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


def test_files_begun_early_reach_the_export_and_an_abandoned_job_leaves_none(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """EarlyGguf (a GPU job converts while it evaluates): the export step gets the files the thread wrote; a job
    that will not export (its evaluate step failed or was stopped) stops the tools and keeps no GGUF file, half-
    written or whole; a conversion that failed fails the export step with its own error."""
    files = EarlyGguf(tiny_model_dir, tmp_path / "kept", ["Q8_0"], never_stop).files()
    assert list(files) == ["Q8_0"] and files["Q8_0"].read_bytes()[:4] == b"GGUF"

    abandoned = EarlyGguf(tiny_model_dir, tmp_path / "abandoned", ["Q8_0"], never_stop)
    abandoned.abandon()
    assert list((tmp_path / "abandoned").iterdir()) == []

    with pytest.raises(ExportError, match="failed"):
        EarlyGguf(tmp_path / "no-model", tmp_path / "failed", ["Q8_0"], never_stop).files()
