"""The check made before training: which architectures llama.cpp's converter can write."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import OPTConfig

from worker.gguf import UnsupportedArchitecture
from worker.gguf.convert import check_tools


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
