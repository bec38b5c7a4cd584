"""The training config mirrors the spec's JSON: its defaults and its checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.training_config import EMBEDDED_MODEL, ExportRequest, TrainingConfig
from tests.app.test_api import SPEC_CONFIG


def test_defaults_are_the_specs_standard_config() -> None:
    defaults = TrainingConfig().model_dump(mode="json")
    # The spec's config, plus the recovery settings Forge adds to `training` and its evaluation and gates.
    expected = SPEC_CONFIG | {"backend": "auto"}
    expected["training"] = SPEC_CONFIG["training"] | {
        "save_steps": None,
        "save_total_limit": 2,
        "resume_on_worker_lost": True,
        "report_to": [],
        "eval_steps": None,
        "effective_batch_size": None,
        "num_gpus": 1,
        "auto_batch_memory_fraction": 0.9,
        "select_checkpoint": None,
        "auto_retry": True,
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
    expected["save"] = SPEC_CONFIG["save"] | {"max_gguf_bytes": None}
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
        "max_regression": 0.02,
        "right_threshold": 0.5,
        "slice_field": None,
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
        ({"save": {"gguf_quantization": ["Q8_0", "q8_0"]}}, ("save", "gguf_quantization")),
        ({"save": {"gguf_quantization": []}}, ("save", "gguf_quantization")),
        ({"save": {"gguf_quantization": ["Q8_0", 4]}}, ("save", "gguf_quantization")),
        ({"save": {"max_gguf_bytes": 0}}, ("save", "max_gguf_bytes")),
        ({"backend": "jax"}, ("backend",)),
        ({"dataset": {"chat_template": "vicuna"}}, ("dataset", "chat_template")),
        ({"dataset": {"format": "csv"}}, ("dataset", "format")),
        ({"dataset": {"invalid_rows": "ignore"}}, ("dataset", "invalid_rows")),
        ({"dataset": {"max_dropped_fraction": 1.5}}, ("dataset", "max_dropped_fraction")),
        ({"training": {"eval_steps": 0}}, ("training", "eval_steps")),
        ({"training": {"per_device_train_batch_size": "max"}}, ("training", "per_device_train_batch_size")),
        ({"training": {"per_device_train_batch_size": True}}, ("training", "per_device_train_batch_size")),
        ({"training": {"gradient_accumulation_steps": 0}}, ("training", "gradient_accumulation_steps")),
        ({"training": {"auto_batch_memory_fraction": 0}}, ("training", "auto_batch_memory_fraction")),
        # Either the batch is measured and the accumulation follows, or both are given: not half of each.
        ({"training": {"per_device_train_batch_size": "auto", "gradient_accumulation_steps": 2}}, ("training",)),
        ({"training": {"effective_batch_size": 16}}, ("training",)),
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


def test_gguf_types_are_one_or_a_list_in_any_case() -> None:
    """The spec writes "Q8_0", Unsloth's docs "q4_k_m": both mean the same file; the spec's spelling is kept."""
    assert TrainingConfig().save.gguf_types == ["Q8_0"]
    save = TrainingConfig.model_validate({"save": {"gguf_quantization": ["q4_k_m", "F16", "Q8_0"]}}).save
    assert save.gguf_quantization == ["Q4_K_M", "f16", "Q8_0"] and save.gguf_types == ["Q4_K_M", "f16", "Q8_0"]
    assert TrainingConfig.model_validate({"save": {"gguf_quantization": "bf16"}}).save.gguf_quantization == "bf16"
    assert TrainingConfig.model_validate({"save": {"gguf_path": None}}).save.gguf_types == []


def test_unknown_gguf_type_is_one_error_naming_the_choices() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingConfig.model_validate({"save": {"gguf_quantization": ["Q8_0", "Q3_K_S"]}})
    (error,) = info.value.errors()
    assert "'Q3_K_S'" in error["msg"] and "Q8_0, f16, bf16, Q4_K_M, Q5_K_M" in error["msg"]


def test_an_export_request_must_export_something() -> None:
    assert ExportRequest().model_dump() == {
        "checkpoint": None,
        "merged_path": None,
        "gguf_path": "models/quantized",
        "gguf_quantization": "Q8_0",
        "max_gguf_bytes": None,
    }
    assert ExportRequest.model_validate({"gguf_quantization": ["Q5_K_M"]}).gguf_quantization == ["Q5_K_M"]
    with pytest.raises(ValidationError, match="nothing to export"):
        ExportRequest.model_validate({"gguf_path": None})
    with pytest.raises(ValidationError) as info:
        ExportRequest.model_validate({"lora_path": "x"})  # the adapters are the source job's; not a choice here
    assert [e["loc"] for e in info.value.errors()] == [("lora_path",)]


def test_auto_batch_keeps_an_effective_batch() -> None:
    auto = TrainingConfig.model_validate({"training": {"per_device_train_batch_size": "auto"}}).training
    assert auto.per_device_train_batch_size == auto.gradient_accumulation_steps == "auto" and auto.effective_batch == 8
    assert [auto.accumulation_for(b) for b in (1, 2, 8, 16)] == [8, 4, 1, 1]
    # A fixed batch with the accumulation worked out: 3 x 4 = 12 >= 10 examples per step.
    fixed = TrainingConfig.model_validate(
        {
            "training": {
                "per_device_train_batch_size": 3,
                "gradient_accumulation_steps": "auto",
                "effective_batch_size": 10,
            }
        }
    ).training
    assert fixed.accumulation_for(3) == 4
    spec = TrainingConfig().training
    assert spec.effective_batch == 8 and spec.accumulation_for(2) == 4


def test_num_gpus_splits_the_global_batch_over_the_ranks() -> None:
    """With N ranks each accumulates 1/N of gradient_accumulation_steps: the global batch is the config's."""
    two = TrainingConfig.model_validate({"training": {"num_gpus": 2}}).training
    assert (two.effective_batch, two.accumulation_for(2, ranks=2)) == (8, 2)  # 2 x 2 x 2 ranks = 8
    assert TrainingConfig().training.num_gpus == 1
    every = TrainingConfig.model_validate({"training": {"num_gpus": "all"}}).training
    assert every.accumulation_for(2, ranks=3) == 2  # 4 over 3 ranks: rounded up (the worker logs 12, not 8)
    auto = TrainingConfig.model_validate(
        {"training": {"per_device_train_batch_size": "auto", "effective_batch_size": 16, "num_gpus": 4}}
    ).training
    assert [auto.accumulation_for(b, ranks=4) for b in (1, 2, 4, 8)] == [4, 2, 1, 1]
    with pytest.raises(ValidationError) as info:
        TrainingConfig.model_validate({"training": {"num_gpus": 3}})  # 4 micro-batches over 3 ranks
    assert "must be a multiple of 3; set it to 6" in str(info.value)
    for bad in (0, 65, "two", True):
        with pytest.raises(ValidationError):
            TrainingConfig.model_validate({"training": {"num_gpus": bad, "gradient_accumulation_steps": 1}})
