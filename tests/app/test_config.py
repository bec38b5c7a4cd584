"""The training config mirrors the spec's JSON: its defaults and its checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.training_config import EMBEDDED_MODEL, TrainingConfig
from tests.app.test_api import SPEC_CONFIG


def test_defaults_are_the_specs_standard_config() -> None:
    defaults = TrainingConfig().model_dump(mode="json")
    # The spec's config, plus the recovery settings Forge adds to `training` and its evaluation and gates.
    expected = SPEC_CONFIG | {"backend": "auto"}
    expected["training"] = SPEC_CONFIG["training"] | {
        "save_steps": None,
        "save_total_limit": 2,
        "resume_on_worker_lost": True,
        "eval_steps": None,
    }
    # The template is inferred from the model (gemma-3 for the spec's gemma-3-4b-it and the embedded model).
    expected["dataset"] = SPEC_CONFIG["dataset"] | {
        "chat_template": None,
        "val_path": "auto",
        "format": "auto",
        "invalid_rows": "reject",
        "max_dropped_fraction": 0.05,
        "truncate_long_rows": True,
    }
    evaluation, gates = defaults.pop("evaluation"), defaults.pop("gates")
    assert defaults == expected
    assert evaluation["baseline"] and evaluation["evaluate"] and evaluation["test_path"] == "data/splits/test.jsonl"
    assert evaluation["do_sample"] is False and evaluation["inference_prompts"] == ["What is 5 + 3?"]
    assert gates == {
        "required": False,
        "metric": "token_f1",
        "improvement": "relative",
        "min_improvement": 0.2,
        "loss_min_decrease": 0.1,
        "loss_max_rebound": 0.5,
        "quantization_max_drop": 0.05,
    }
    assert defaults["model"]["name"] == EMBEDDED_MODEL


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"lora": {"target_modules": []}}, ("lora", "target_modules")),
        ({"training": {"max_steps": 0}}, ("training", "max_steps")),
        ({"training": {"output_dir": "/tmp/x"}}, ("training", "output_dir")),
        ({"save": {"gguf_path": "a/../../b"}}, ("save", "gguf_path")),
        ({"save": {"gguf_quantization": "Q2_K"}}, ("save", "gguf_quantization")),
        ({"backend": "jax"}, ("backend",)),
        ({"dataset": {"chat_template": "vicuna"}}, ("dataset", "chat_template")),
        ({"dataset": {"format": "csv"}}, ("dataset", "format")),
        ({"dataset": {"invalid_rows": "ignore"}}, ("dataset", "invalid_rows")),
        ({"dataset": {"max_dropped_fraction": 1.5}}, ("dataset", "max_dropped_fraction")),
        ({"training": {"eval_steps": 0}}, ("training", "eval_steps")),
        ({"unknown": 1}, ("unknown",)),
        ({"gates": {"metric": "bleu"}}, ("gates", "metric")),
        ({"gates": {"improvement": "percent"}}, ("gates", "improvement")),
        ({"gates": {"metric": "perplexity", "min_improvement": 1.0}}, ("gates",)),
        ({"evaluation": {"max_new_tokens": 0}}, ("evaluation", "max_new_tokens")),
        ({"evaluation": {"glossary_path": "a\x00b"}}, ("evaluation", "glossary_path")),
        ({"evaluation": {"inference_prompts": [""]}}, ("evaluation", "inference_prompts", 0)),
    ],
)
def test_bad_values_are_named(patch: dict, where: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingConfig.model_validate(patch)
    assert [tuple(e["loc"]) for e in info.value.errors()] == [where]


def test_some_modules_must_train() -> None:
    with pytest.raises(ValidationError, match="at least one of"):
        TrainingConfig.model_validate({"lora": {"finetune_attention_modules": False, "finetune_mlp_modules": False}})
