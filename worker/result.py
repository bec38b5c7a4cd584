"""A training job's result: metrics/training-stats.json, and the job's `result` less the log history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from worker import devices

if TYPE_CHECKING:
    from worker.setup import Setup


@dataclass
class Trained:
    """What the train step leaves: the trainer's numbers and the loss history."""

    metrics: dict[str, Any]
    steps: int
    epochs: float
    tokens_seen: int
    history: list[dict[str, Any]]  # the trainer's, restored from the checkpoint on a resume: the whole run's curve
    logged: list[dict[str, Any]]  # what this attempt logged (with wall time and tokens seen)
    tokens_per_second: float | None  # after the first step: compile and warm-up left out
    checkpoint: dict[str, Any] | None = None  # training.select_checkpoint best: the one picked (worker/checkpoints.py)


class JobResult(BaseModel):
    """The job's result: metrics/training-stats.json, and the job's `result` less the log history."""

    backend: str
    model: str
    model_path: str
    steps: int
    epochs: float
    train_loss: float
    final_loss: float | None
    train_runtime_seconds: float
    tokens_seen: int
    tokens_per_second: float | None  # training throughput after the first step (its compile left out)
    tokens_per_second_overall: float | None = None  # tokens seen / the trainer's whole runtime, compile included
    peak_gpu_memory_gib: float | None  # allocated, this job's own peak (reset at its start)
    peak_gpu_memory_reserved_gib: float | None = None
    data: dict[str, Any]
    eval_loss: float | None
    quantization: dict[str, Any] | None = None  # the GGUF gate's summary, when GGUF files were exported
    exports: dict[str, Any] = {}
    wall_seconds: float = 0.0
    # training.select_checkpoint best: the checkpoint saved and exported {picked_step, metric, score}.
    checkpoint: dict[str, Any] | None = None
    model_kept_from: str | None = None  # the job whose loaded model this one trained on (worker/warm_model.py)
    # Wall seconds of each phase the job went through (its own timestamps), in order: where the time went.
    phase_seconds: dict[str, float] = {}
    log_history: list[dict[str, Any]] = []
    # What the steps published while the job ran (Reporter.partial).
    batch_size: dict[str, Any] | None = None
    evaluation_progress: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    gates: dict[str, Any] | None = None

    @classmethod
    def of(cls, backend: str, setup: Setup, data: dict[str, Any], trained: Trained, kept_from: str | None) -> JobResult:
        """The train step's numbers; the later steps add theirs (LoraRecipe.finish)."""
        metrics, seen = trained.metrics, trained.tokens_seen
        runtime = float(metrics.get("train_runtime", 0.0))
        return cls(
            backend=backend,
            model=setup.config.model.name,
            model_path=setup.model_path,
            steps=trained.steps,
            epochs=trained.epochs,
            train_loss=float(metrics.get("train_loss", float("nan"))),
            final_loss=next((e["loss"] for e in reversed(trained.logged) if "loss" in e), None),
            train_runtime_seconds=round(runtime, 3),
            tokens_seen=seen,
            tokens_per_second=trained.tokens_per_second,
            tokens_per_second_overall=round(seen / runtime, 1) if runtime > 0 and seen else None,
            peak_gpu_memory_gib=devices.peak_gpu_memory_gib(),
            peak_gpu_memory_reserved_gib=devices.peak_gpu_memory_reserved_gib(),
            data=data,
            log_history=trained.logged,
            eval_loss=next((e["eval_loss"] for e in reversed(trained.logged) if "eval_loss" in e), None),
            model_kept_from=kept_from,
            checkpoint=trained.checkpoint,
        )

    def as_stats(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)
