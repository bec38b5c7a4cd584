"""The training config: one pydantic model mirroring the spec's JSON (model, lora, training, dataset, save),
plus what Forge adds: `evaluation` (the baseline and evaluate steps) and `gates` (the spec's gate criteria).

It validates API input, documents the OpenAPI page and drives the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Annotated, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

EMBEDDED_MODEL = "embedded:gemma-3-270m"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ALL_PROJECTIONS = [*ATTENTION_PROJECTIONS, *MLP_PROJECTIONS]

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
    # A misspelt key is an error, not a silently ignored setting; `0` or "yes" is not a boolean; no setting
    # means anything as Infinity or NaN (`weight_decay: .inf` once reached the trainer).
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=(), allow_inf_nan=False)


@lru_cache(maxsize=1)
def optimizer_names() -> frozenset[str]:
    """The optimizers transformers' Trainer knows. Imported on first use (transformers pulls in torch, ~4 s):
    the API warms it at start, off the event loop."""
    from transformers.training_args import OptimizerNames

    return frozenset(name.value for name in OptimizerNames)


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

    @property
    def trained_modules(self) -> list[str]:
        """target_modules less those the finetune_*_modules switches turn off: what gets adapters."""
        off = (() if self.finetune_attention_modules else ATTENTION_PROJECTIONS) + (
            () if self.finetune_mlp_modules else MLP_PROJECTIONS
        )
        return [name for name in self.target_modules if name not in off]

    @model_validator(mode="after")
    def _something_trains(self) -> LoraSection:
        if not (self.finetune_attention_modules or self.finetune_mlp_modules):
            raise ValueError("at least one of finetune_attention_modules, finetune_mlp_modules must be true")
        if not (self.finetune_language_layers or self.finetune_vision_layers):
            raise ValueError(
                "at least one of finetune_language_layers, finetune_vision_layers must be true: with both off "
                "nothing trains"
            )
        if not self.trained_modules:
            raise ValueError(
                f"target_modules {self.target_modules} are all switched off by finetune_attention_modules / "
                "finetune_mlp_modules, so nothing trains; add modules or switch one on"
            )
        return self


AUTO: Final = "auto"
# The examples per optimizer step `auto` keeps when effective_batch_size is not given: the spec's 2 x 4.
DEFAULT_EFFECTIVE_BATCH = 8
MAX_BATCH_COUNT = 4096


def _count_or_auto(value: object) -> int | str:
    """One check, so a bad value is one error naming both choices (not one per member of a union)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_COUNT:
        raise ValueError(f'must be a whole number from 1 to {MAX_BATCH_COUNT}, or "auto"')
    return value


CountOrAuto = Annotated[
    int | Literal["auto"],
    PlainValidator(_count_or_auto),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_BATCH_COUNT}, {"const": AUTO}]}),
]


MAX_GPUS = 64  # one host's GPUs: torchrun --standalone starts every rank on the worker's machine
GpuCount = Annotated[int, Field(ge=1, le=MAX_GPUS)] | Literal["all"]


def _none_is_empty(value: object) -> object:
    return [] if value == "none" else value


class TrainingSection(_Section):
    per_device_train_batch_size: CountOrAuto = Field(
        default=2,
        description='Examples per device step. "auto": the largest batch (doubling from 1 up to '
        "effective_batch_size) whose training step, measured on the job's longest row before training, peaks "
        "within auto_batch_memory_fraction of the memory the job can have (GPU memory; RAM on a CPU); "
        "gradient_accumulation_steps then follows. The pick is reported in the job's result.batch_size.",
    )
    gradient_accumulation_steps: CountOrAuto = Field(
        default=4,
        description="Micro-batches per optimizer step, over all ranks (with num_gpus N each rank accumulates 1/N "
        'of them). "auto" (implied by an auto batch): effective_batch_size divided by the per-device batch and the '
        "ranks, rounded up.",
    )
    effective_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description=f"Examples per optimizer step that the auto settings keep; null: {DEFAULT_EFFECTIVE_BATCH} "
        "(the spec's 2 x 4). Only with an auto batch or accumulation.",
    )
    num_gpus: GpuCount = Field(
        default=1,
        description='GPUs the job trains on, one DDP rank each (torchrun); "all": every GPU of the worker that claims '
        "it. The global batch stays per_device_train_batch_size x gradient_accumulation_steps (or "
        "effective_batch_size): each rank accumulates its share, and result.batch_size reports per-device batch x "
        "accumulation x ranks.",
    )
    auto_batch_memory_fraction: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="With an auto batch: the share of the device memory the measured step may peak at; the rest is "
        "left for the optimizer state, evaluation and other processes.",
    )
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

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        known = optimizer_names()
        if value not in known:
            common = ", ".join(n for n in ("adamw_8bit", "adamw_torch", "adamw_torch_fused", "sgd", "adafactor"))
            raise ValueError(f"unknown optimizer {value!r}; use a transformers optimizer name, e.g. {common}")
        return value

    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    logging_steps: int = Field(default=1, ge=1, description="Report loss every this many steps.")
    seed: int = Field(
        default=3407, ge=0, le=2**32 - 1, description="Seed for LoRA init, shuffling and dropout (0 to 2**32-1)."
    )
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
    select_checkpoint: Literal["last", "best"] | None = Field(
        default=None,
        description="best: each evaluation point's model is scored on the validation split by gates.metric and the "
        "best one is saved, merged, exported and evaluated (metrics/checkpoints.json); last: the model at the end of "
        "training; null: best when there is a validation split, else last.",
    )
    resume_on_worker_lost: bool = Field(
        default=True, description="Re-queue a job whose worker died, from its last checkpoint, instead of failing it."
    )
    auto_retry: bool = Field(
        default=True,
        description="Retry a job once that ran out of memory while training (from its last checkpoint, half the "
        "per-device batch, twice the accumulation) and once that diverged (from the start, half the learning rate).",
    )
    report_to: Annotated[list[Literal["tensorboard", "mlflow"]], BeforeValidator(_none_is_empty)] = Field(
        default_factory=list,
        description='Where the trainer also logs its metrics: "tensorboard" writes event files under '
        'logs/tensorboard in the run folder; "mlflow" logs a run named by the job id to MLFLOW_TRACKING_URI '
        '(default: .factory/mlflow.db in the project); [] or "none": nowhere else.',
    )

    @field_validator("output_dir")
    @classmethod
    def _output_dir_inside(cls, value: str) -> str:
        return _relative_inside_run(value)

    @model_validator(mode="after")
    def _batch_settings_agree(self) -> TrainingSection:
        if self.per_device_train_batch_size == AUTO:
            if "gradient_accumulation_steps" not in self.model_fields_set:
                self.gradient_accumulation_steps = AUTO
            elif self.gradient_accumulation_steps != AUTO:
                raise ValueError(
                    "with per_device_train_batch_size 'auto' the accumulation follows from the batch picked: set "
                    "gradient_accumulation_steps to 'auto' (or leave it out) and effective_batch_size to the "
                    "examples per optimizer step"
                )
        elif self.gradient_accumulation_steps != AUTO and self.effective_batch_size is not None:
            raise ValueError(
                "effective_batch_size is used only with an 'auto' per_device_train_batch_size or "
                "gradient_accumulation_steps; with fixed numbers the effective batch is their product"
            )
        ranks, steps = self.num_gpus, self.gradient_accumulation_steps
        if isinstance(ranks, int) and isinstance(steps, int) and steps % ranks:
            raise ValueError(
                f"with num_gpus {ranks} each rank accumulates gradient_accumulation_steps / {ranks} micro-batches, so "
                f"gradient_accumulation_steps ({steps}) must be a multiple of {ranks}; set it to "
                f"{-(-steps // ranks) * ranks}, or to 'auto' with effective_batch_size"
            )
        return self

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step."""
        if self.effective_batch_size is not None:
            return self.effective_batch_size
        if isinstance(self.per_device_train_batch_size, int) and isinstance(self.gradient_accumulation_steps, int):
            return self.per_device_train_batch_size * self.gradient_accumulation_steps
        return DEFAULT_EFFECTIVE_BATCH

    def accumulation_for(self, batch: int, ranks: int = 1) -> int:
        """Each rank's gradient accumulation with a per-device batch: its share of the configured one, or the
        effective batch divided by the batch and the ranks; rounded up (exact when num_gpus is a number)."""
        if isinstance(self.gradient_accumulation_steps, int):
            return -(-self.gradient_accumulation_steps // ranks)
        return -(-self.effective_batch // (batch * ranks))


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


GGUFType = Literal["Q8_0", "f16", "bf16", "Q4_K_M", "Q5_K_M"]
GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)


def _canonical_gguf_types(value: object) -> object:
    """Any letter case ("q4_k_m", as Unsloth's docs write it) becomes the spec's spelling; unknown names are
    one clear error here rather than one per member of the union below."""
    canonical = {name.lower(): name for name in GGUF_TYPES}
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be a GGUF type or a list of them: {', '.join(GGUF_TYPES)}")
    unknown = [n for n in names if n.lower() not in canonical]
    if unknown:
        raise ValueError(f"unknown GGUF type(s) {', '.join(map(repr, unknown))}; choose from {', '.join(GGUF_TYPES)}")
    fixed = [canonical[n.lower()] for n in names]
    if isinstance(value, str):
        return fixed[0]
    if not fixed:
        raise ValueError(f"give at least one GGUF type ({', '.join(GGUF_TYPES)}), or set gguf_path to null")
    repeated = sorted({n for n in fixed if fixed.count(n) > 1})
    if repeated:
        raise ValueError(f"GGUF type(s) listed twice: {', '.join(repeated)}")
    return fixed


RunPath = Annotated[str, AfterValidator(_relative_inside_run)]
GGUFQuantization = Annotated[
    GGUFType | list[GGUFType],
    BeforeValidator(_canonical_gguf_types),
    Field(
        description=(
            "One GGUF type or a list: Q8_0, f16, bf16 (written by llama.cpp's converter) and the k-quants Q4_K_M, "
            "Q5_K_M (quantized from f16 by llama.cpp). Each becomes `model-<TYPE>.gguf` in gguf_path."
        ),
        examples=["Q8_0", ["Q8_0", "Q4_K_M"]],
    ),
]
MaxGGUFBytes = Annotated[
    int | None,
    Field(ge=1, description="quantization-verified fails a GGUF file larger than this; null: no size limit."),
]


def _gguf_types(gguf_path: str | None, quantization: str | Sequence[str]) -> list[str]:
    if gguf_path is None:
        return []
    return [quantization] if isinstance(quantization, str) else list(quantization)


class SaveSection(_Section):
    lora_path: RunPath = Field(default="models/checkpoints/lora", description="LoRA adapters, in the run folder.")
    merged_path: RunPath | None = Field(
        default="models/checkpoints/merged", description="Merged 16-bit model, in the run folder; null skips."
    )
    gguf_path: RunPath | None = Field(
        default="models/quantized", description="GGUF files, in the run folder; null skips GGUF export."
    )
    gguf_quantization: GGUFQuantization = "Q8_0"
    max_gguf_bytes: MaxGGUFBytes = None

    @property
    def gguf_types(self) -> list[str]:
        """The requested GGUF types in order; none when gguf_path is null."""
        return _gguf_types(self.gguf_path, self.gguf_quantization)


CheckpointName = Annotated[
    str,
    StringConstraints(pattern=r"^checkpoint-[0-9]{1,12}$"),
    Field(description="A checkpoint folder in the job's training.output_dir, e.g. checkpoint-40."),
]


class ResumeRequest(_Section):
    """Body of POST /api/training/jobs/{id}/resume (optional)."""

    checkpoint: CheckpointName | None = Field(
        default=None,
        description="Resume from this checkpoint (GET .../checkpoints lists them); null: the newest complete one.",
    )


class ExportRequest(_Section):
    """Body of POST /api/training/jobs/{id}/exports: a finished job's adapters, exported again."""

    checkpoint: CheckpointName | None = Field(
        default=None,
        description="Export this checkpoint's adapters (GET .../checkpoints lists them); null: the final ones.",
    )

    merged_path: RunPath | None = Field(
        default=None, description="Also keep the merged 16-bit model, in the export job's run folder; null: don't."
    )
    gguf_path: RunPath | None = Field(
        default="models/quantized", description="GGUF files, in the export job's run folder; null: none."
    )
    gguf_quantization: GGUFQuantization = "Q8_0"
    max_gguf_bytes: MaxGGUFBytes = None

    @model_validator(mode="after")
    def _something_to_export(self) -> ExportRequest:
        if self.gguf_path is None and self.merged_path is None:
            raise ValueError("nothing to export: set gguf_path (GGUF files) or merged_path (a merged model)")
        return self


class EvaluationSection(_Section):
    """The spec's `baseline` and `evaluate` steps: the base and the fine-tuned model on the same test split."""

    baseline: bool = Field(
        default=True, description="Score the base model on the test split before training (metrics/baseline.json)."
    )
    evaluate: bool = Field(
        default=True,
        description="Score the fine-tuned model on the same split after training (metrics/evaluation.json).",
    )
    reuse_baseline: bool = Field(
        default=True,
        description="Reuse the baseline an earlier job scored on the same base model, test split and generation "
        "settings (metrics/baseline.json then names that job); false scores the base model again.",
    )
    test_path: str = Field(
        default="data/splits/test.jsonl",
        min_length=1,
        description="ShareGPT JSONL, relative to the project; each row's last assistant turn is the reference answer.",
    )
    max_examples: int | None = Field(
        default=None, ge=1, description="Score only the first N test examples; null scores them all."
    )
    batch_size: CountOrAuto = Field(
        default=AUTO,
        description='Prompts answered at once, longest first (and scored for loss); "auto": 64 on a GPU, where each '
        "batch also keeps one of a few shapes so compiled models compile once, 8 on a CPU (the loss: at most 8).",
    )
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
    max_regression: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="no-regression: the largest relative drop of `metric` from the project's accepted model (POST "
        "/api/training/jobs/{id}/promote) to this job, on the same test split, allowed.",
    )
    right_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="metrics/comparison.json: an answer counts as right when its own `metric` score (token F1, "
        "chrF or ROUGE-L of that one answer) is at least this; exact match and localization are right or wrong.",
    )
    slice_field: str | None = Field(
        default=None,
        min_length=1,
        description="A test row's tag (e.g. category or source): every answer metric is also reported per tag for "
        "the baseline, the fine-tuned and the accepted model (metrics/slices.json); null: no slices.",
        examples=["category"],
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
