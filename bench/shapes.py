"""Random-weight models of real architectures, made from their public configs, with the real Gemma 3 tokenizer.

Throughput and memory depend on the shape, not on the weights, so benchmarks need no hub: `build("gemma3-4b",
out)` writes a loadable model folder. Llama 3.1 8B keeps its own shape but takes the Gemma 3 tokenizer's
vocabulary size, so that the embedding matches the tokenizer the data is tokenized with (noted in the results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GEMMA3_270M = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gemma-3-270m-config.json"


def _gemma3_layer_types(layers: int) -> list[str]:
    # Gemma 3: five sliding-window layers, then one global one.
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]


def _gemma3_4b() -> dict[str, Any]:
    """google/gemma-3-4b-it's text_config (the language model without the vision tower)."""
    config = json.loads(GEMMA3_270M.read_text())
    config.update(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        sliding_window=1024,
        layer_types=_gemma3_layer_types(34),
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    )
    config["rope_parameters"]["full_attention"] = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}
    return config


def _llama31_8b() -> dict[str, Any]:
    """meta-llama/Llama-3.1-8B-Instruct's config."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": False,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }


def _tiny() -> dict[str, Any]:
    """Two layers, 32 wide: trains in milliseconds a step on a CPU (API and progress benchmarks)."""
    config = json.loads(GEMMA3_270M.read_text())
    config.update(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
    )
    return config


SHAPES = {
    "tiny": _tiny,
    "gemma3-270m": lambda: json.loads(GEMMA3_270M.read_text()),
    "gemma3-4b": _gemma3_4b,
    "llama3.1-8b": _llama31_8b,
}


def build(shape: str, out: Path, tokenizer_dir: Path, device: str = "cpu") -> Path:
    """Write a random-weight model of `shape` (bf16 on CUDA, fp32 on CPU) and the tokenizer to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = SHAPES[shape]()
    raw["vocab_size"] = len(tokenizer)
    model_type = raw.pop("model_type")
    config = AutoConfig.for_model(model_type, **raw)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
