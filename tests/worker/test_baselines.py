"""The baseline's reuse key: what the base model's scores depend on, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from app.training_config import TrainingConfig
from worker import baselines
from worker.evaluation import TestExample as Example


def _key(model: Path, examples: list[Example], device: str = "cpu", **sections: dict) -> str:
    model_section = {"name": str(model), **sections.pop("model_section", {})}
    config = TrainingConfig.model_validate({"model": model_section, **sections})
    return baselines.key(config, "transformers", str(model), "gemma-3", examples, device)


def test_the_key_follows_the_model_files_the_split_and_the_generation_settings(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"a" * 64)
    examples = [Example([{"role": "user", "content": "2 + 2?"}], "4")]
    first = _key(model, examples)
    assert _key(model, examples) == first
    # Not part of it: the training data, LoRA and training settings (the base model's answers ignore them).
    assert _key(model, examples, lora={"r": 32}, training={"learning_rate": 1e-3}, dataset={"path": "x.jsonl"}) == first
    assert _key(model, examples, training={"seed": 7}) == first  # greedy: the seed plays no part

    assert _key(model, [Example(examples[0].prompt, "four")]) != first  # the split's content
    assert _key(model, [*examples, examples[0]]) != first
    assert _key(model, examples, evaluation={"max_new_tokens": 12}) != first  # generation settings
    assert _key(model, examples, evaluation={"do_sample": True}) != first
    assert _key(model, examples, model_section={"max_seq_length": 512}) != first
    assert _key(model, examples, device="NVIDIA H100 80GB HBM3") != first  # a GPU rounds otherwise

    weights.write_bytes(b"b" * 64)  # the same folder, new weights in place
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _key(model, examples) != first


def test_the_device_is_where_the_model_answers() -> None:
    import torch

    assert baselines.device_of(torch.nn.Linear(2, 2)) == "cpu"
