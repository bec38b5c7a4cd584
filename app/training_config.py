"""The training config: one pydantic model mirroring the spec's JSON (model, lora, training, dataset, save),
plus what Forge adds: `evaluation` (the baseline and evaluate steps) and `gates` (the spec's gate criteria).

It validates API input, documents the OpenAPI page and drives the worker.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

EMBEDDED_MODEL = "embedded:gemma-3-270m"
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The metrics of the baseline and evaluate steps, by the names metrics/*.json and the gates use.
EXACT_MATCH: Final = "exact_match"
TOKEN_F1: Final = "token_f1"
CHRF: Final = "chrf"
ROUGE_L: Final = "rouge_l"
LOCALIZATION_SCORE: Final = "localization_score"
TEST_LOSS: Final = "test_loss"
PERPLEXITY: Final = "perplexity"
MetricName = Literal["exact_match", "token_f1", "chrf", "rouge_l", "localization_score", "test_loss", "perplexity"]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)
LOWER_IS_BETTER = frozenset({TEST_LOSS, PERPLEXITY})


def _relative_inside_run(value: str) -> str:
    path = PurePosixPath(value.replace("\\", "/"))
    if not value.strip() or path.is_absolute() or ".." in path.parts or "\x00" in value:
        raise ValueError("must be a relative path inside the job's run folder (no '..', not absolute)")
    return value


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting; `0` or "yes" is not a boolean.
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


class ModelSection(_Section):
    name: str = Field(
        default=EMBEDDED_MODEL,
        min_length=1,
        description=(
            f"`{EMBEDDED_MODEL}` (bundled, no hub needed), a local model folder "
            "(absolute, or relative to the project), or a hub id the worker already has cached."
        ),
        examples=[EMBEDDED_MODEL, "unsloth/gemma-3-4b-it"],
    )
    max_seq_length: int = Field(default=2048, ge=16, le=131072, description="Longer examples are truncated.")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        default=None,
        description="null: bfloat16 where the GPU has it, float16 on older GPUs, float32 on a CPU.",
    )
    load_in_4bit: bool = Field(default=True, description="QLoRA: base weights in 4 bits (CUDA only).")


class LoraSection(_Section):
    r: int = Field(default=8, ge=1, le=1024, description="LoRA rank (8, 16, 32, 64, 128).")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS), min_length=1, description="Modules that get adapters."
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases train.")
    use_gradient_checkpointing: bool | Literal["unsloth"] = Field(
        default="unsloth", description='"unsloth" (offloaded, Unsloth only), true or false.'
    )
    finetune_vision_layers: bool = Field(default=False, description="Vision tower (multimodal models).")
    finetune_language_layers: bool = Field(default=True, description="Language layers.")
    finetune_attention_modules: bool = Field(default=True, description="Attention projections.")
    finetune_mlp_modules: bool = Field(default=True, description="MLP projections.")


class TrainingSection(_Section):
    per_device_train_batch_size: int = Field(default=2, ge=1, le=4096, description="Examples per device step.")
    gradient_accumulation_steps: int = Field(default=4, ge=1, le=4096, description="Steps per optimizer step.")
    warmup_steps: int = Field(default=5, ge=0, description="Linear warm-up, in optimizer steps.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps; null trains num_train_epochs."
    )
    num_train_epochs: float = Field(default=3, gt=0, le=1000, description="Passes over the data.")
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = Field(default="linear", description="Learning-rate schedule.")
    optim: str = Field(
        default="adamw_8bit",
        description="A transformers optimizer name; 8-bit optimizers fall back to adamw_torch without CUDA.",
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    logging_steps: int = Field(default=1, ge=1, description="Report loss every this many steps.")
    seed: int = Field(default=3407, description="Seed for LoRA init, shuffling and dropout.")
    output_dir: str = Field(default="outputs", description="Trainer scratch folder, inside the job's run folder.")
    save_steps: int | None = Field(
        default=None,
        ge=1,
        description="Keep a resumable checkpoint every this many steps; null keeps none (a lost job cannot resume).",
    )
    save_total_limit: int = Field(default=2, ge=1, description="Checkpoints kept; older ones are deleted.")
    eval_steps: int | None = Field(
        default=None,
        ge=1,
        description="With a validation set: its loss every N steps; null: at each epoch's end and the last step.",
    )
    resume_on_worker_lost: bool = Field(
        default=True, description="Re-queue a job whose worker died, from its last checkpoint, instead of failing it."
    )

    @field_validator("output_dir")
    @classmethod
    def _output_dir_inside(cls, value: str) -> str:
        return _relative_inside_run(value)


class DatasetSection(_Section):
    path: str = Field(
        default="data/splits/train.jsonl",
        min_length=1,
        description="Training JSONL, relative to the project directory.",
    )
    val_path: str | None = Field(
        default="auto",
        min_length=1,
        description=(
            'Validation JSONL for the evaluation loss, relative to the project. "auto": the val.jsonl beside '
            "`path`, when there is one; null: no evaluation."
        ),
    )
    format: Literal["auto", "sharegpt", "sharegpt-from-value", "openai", "alpaca"] = Field(
        default="auto",
        description=(
            "Row format: sharegpt (conversations of role/content), sharegpt-from-value (from/value, human/gpt), "
            "openai (messages), alpaca (instruction/input/output, the Data Factory format); auto: detected per file."
        ),
    )
    text_field: str = Field(default="text", description="Column the templated text is written to.")
    chat_template: Literal["gemma-3", "llama-3.1", "mistral", "qwen-2.5"] | None = Field(
        default=None, description="Chat template for the turns; null: inferred from the model."
    )
    invalid_rows: Literal["reject", "drop"] = Field(
        default="reject", description="A bad row refuses the job (reject), or is left out (drop)."
    )
    max_dropped_fraction: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description='With invalid_rows "drop": the job is still refused when more than this share of a file is bad.',
    )
    truncate_long_rows: bool = Field(
        default=True,
        description="Cut rows longer than model.max_seq_length after templating (counted); false: they are bad rows.",
    )

    @field_validator("path", "val_path")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must be a file path (it contains a NUL character)")
        return value


class SaveSection(_Section):
    lora_path: str = Field(default="models/checkpoints/lora", description="LoRA adapters, in the run folder.")
    merged_path: str | None = Field(
        default="models/checkpoints/merged", description="Merged 16-bit model, in the run folder; null skips."
    )
    gguf_path: str | None = Field(default="models/quantized", description="GGUF folder, in the run folder; null skips.")
    gguf_quantization: Literal["Q8_0", "f16", "bf16"] = Field(default="Q8_0", description="GGUF type.")

    @field_validator("lora_path", "merged_path", "gguf_path")
    @classmethod
    def _inside_run_folder(cls, value: str | None) -> str | None:
        return None if value is None else _relative_inside_run(value)


class EvaluationSection(_Section):
    """The spec's `baseline` and `evaluate` steps: the base and the fine-tuned model on the same test split."""

    baseline: bool = Field(
        default=True, description="Score the base model on the test split before training (metrics/baseline.json)."
    )
    evaluate: bool = Field(
        default=True,
        description="Score the fine-tuned model on the same split after training (metrics/evaluation.json).",
    )
    test_path: str = Field(
        default="data/splits/test.jsonl",
        min_length=1,
        description="ShareGPT JSONL, relative to the project; each row's last assistant turn is the reference answer.",
    )
    max_examples: int | None = Field(
        default=None, ge=1, description="Score only the first N test examples; null scores them all."
    )
    batch_size: int = Field(default=8, ge=1, le=1024, description="Prompts generated (and scored for loss) at once.")
    max_new_tokens: int = Field(default=128, ge=1, le=8192, description="Longest answer generated per prompt.")
    do_sample: bool = Field(
        default=False,
        description="false: greedy decoding (what exact match, token F1, chrF and ROUGE-L are defined on); "
        "true: sample with temperature, top_p and top_k.",
    )
    temperature: float = Field(default=1.0, gt=0, le=10, description="Sampling temperature (do_sample only).")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass (do_sample only).")
    top_k: int = Field(default=64, ge=0, description="Sample from the k likeliest tokens; 0: all (do_sample only).")
    glossary_path: str | None = Field(
        default=None,
        description="The localization score's local terms (names, places, currency): a JSON list of strings, "
        "relative to the project. An example expects the glossary terms its reference answer uses.",
        examples=["data/glossary.json"],
    )
    terms_field: str = Field(
        default="expected_terms",
        min_length=1,
        description="A test row's own list of expected local terms, used besides the glossary's.",
    )
    inference_prompts: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=lambda: ["What is 5 + 3?"],
        description="The spec's Inference Testing: asked of the fine-tuned model after training; the answers go "
        "to metrics/samples.jsonl.",
    )

    @field_validator("test_path", "glossary_path")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        if value is not None and ("\x00" in value or not value.strip()):
            raise ValueError("must be a file path relative to the project (no NUL characters, not blank)")
        return value


class GatesSection(_Section):
    """The spec's Gate Criteria; results in metrics/gates.json, the job and the API."""

    required: bool = Field(
        default=False,
        description="true: a failed gate fails the job (error gate_failed); false: the job succeeds and the gate "
        "shows failed.",
    )
    metric: MetricName = Field(
        default=TOKEN_F1,
        description="The metric model-performance compares (and quantization-verified watches). Rates are in "
        "0..1; test_loss and perplexity count lower as better.",
    )
    improvement: Literal["relative", "absolute"] = Field(
        default="relative",
        description="relative: fine-tuned >= baseline x (1 + min_improvement); absolute: fine-tuned >= baseline + "
        "min_improvement (points of a 0..1 rate), what a baseline near zero needs.",
    )
    min_improvement: float = Field(
        default=0.2, ge=0, le=100, description="How much the fine-tuned model must beat the baseline by."
    )
    loss_min_decrease: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="loss-converged: the mean loss of the last logged steps must be at least this fraction below "
        "that of the first ones.",
    )
    loss_max_rebound: float = Field(
        default=0.5,
        ge=0,
        description="loss-converged: the loss at the end may give back at most this fraction of its drop from the "
        "start to its lowest (more means it is diverging).",
    )
    quantization_max_drop: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="quantization-verified (GGUF export): the largest relative drop of `metric` from the merged "
        "model to the GGUF allowed.",
    )

    @model_validator(mode="after")
    def _reachable(self) -> GatesSection:
        if self.metric in LOWER_IS_BETTER and self.improvement == "relative" and self.min_improvement >= 1:
            raise ValueError(f"gates.min_improvement must be below 1 for {self.metric} (a relative decrease)")
        return self


class TrainingConfig(_Section):
    """A fine-tuning job, in the shape of the spec's training-config.json."""

    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    save: SaveSection = Field(default_factory=SaveSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    backend: Literal["auto", "unsloth", "transformers"] = Field(
        default="auto",
        description="auto: Unsloth where CUDA and the `gpu` extra are present, else transformers + PEFT.",
    )

    @model_validator(mode="after")
    def _some_layers_train(self) -> TrainingConfig:
        if not (self.lora.finetune_attention_modules or self.lora.finetune_mlp_modules):
            raise ValueError("lora: at least one of finetune_attention_modules, finetune_mlp_modules must be true")
        return self
