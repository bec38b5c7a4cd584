"""A training job's result: metrics/training-stats.json, and the job's `result` less the log history."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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

    def as_stats(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)
