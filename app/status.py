"""The flat status object of the spec, shared by GET /api/training and .factory/training-status.json."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlmodel import Session

from app import files, jobs
from app.models import (
    ACTIVE_STATUSES,
    EvaluationProgress,
    GatesReport,
    Job,
    JobKind,
    JobPhase,
    JobStatus,
    evaluation_of,
)


class TrainingStatus(BaseModel):
    """The flat object the Forge UI's TrainingProgress.tsx polls (spec: "Integration with Forge Web UI")."""

    running: bool = PydanticField(description="True while a worker is on the job (running or cancelling).")
    step: int
    total_steps: int
    epoch: int = PydanticField(description="Current epoch, counted from 1 once training has started.")
    total_epochs: int
    loss: float | None
    learning_rate: float | None
    eta_seconds: int | None
    started_at: datetime | None
    checkpoint_at: datetime | None
    error: str | None = PydanticField(description="A message a person can act on, or null.")
    # Added fields (the spec allows additions; none of the above is renamed or retyped).
    job_id: str | None = None
    status: JobStatus | None = None
    phase: JobPhase | None = None
    error_code: str | None = None
    epoch_progress: float = PydanticField(default=0.0, description="Fractional epochs done.")
    tokens_per_second: float | None = None
    updated_at: datetime | None = None
    eval_loss: float | None = PydanticField(
        default=None, description="Loss on the validation split at the end of training, when there is one."
    )
    evaluation: EvaluationProgress | None = PydanticField(
        default=None, description="Baseline or evaluate step progress: test examples answered of the total."
    )
    gates: GatesReport | None = PydanticField(default=None, description="The gates, once the job has run them.")
    kind: JobKind | None = None
    phase_progress: float | None = PydanticField(default=None, description="0-1 within a phase other than training.")
    phase_detail: str | None = PydanticField(default=None, description="What that phase is doing now.")


def idle() -> TrainingStatus:
    return TrainingStatus(
        running=False,
        step=0,
        total_steps=0,
        epoch=0,
        total_epochs=0,
        loss=None,
        learning_rate=None,
        eta_seconds=None,
        started_at=None,
        checkpoint_at=None,
        error=None,
    )


def of_job(job: Job | None) -> TrainingStatus:
    if job is None:
        return idle()
    gates, progress = evaluation_of(job)
    total_epochs = job.total_epochs if job.total_epochs is not None else job.training_config.training.num_train_epochs
    # The UI shows "epoch N of M": N counts from 1 once a step has run (45/100 steps of 3 epochs -> epoch 2).
    epoch = min(math.ceil(job.epoch - 1e-9), math.ceil(total_epochs)) if job.step > 0 else 0
    return TrainingStatus(
        running=job.status in ACTIVE_STATUSES,
        step=job.step,
        total_steps=job.total_steps or 0,
        epoch=max(epoch, 0),
        total_epochs=math.ceil(total_epochs),
        loss=job.loss,
        learning_rate=job.learning_rate,
        eta_seconds=None if job.eta_seconds is None else round(job.eta_seconds),
        started_at=job.started_at,
        checkpoint_at=job.checkpoint_at,
        error=job.error_message if job.error_code else None,
        job_id=job.id,
        status=job.status,
        phase=job.phase,
        error_code=job.error_code,
        epoch_progress=round(job.epoch, 4),
        tokens_per_second=job.tokens_per_second,
        updated_at=job.updated_at,
        eval_loss=(job.result or {}).get("eval_loss"),
        evaluation=progress,
        gates=gates,
        kind=job.kind,
        phase_progress=job.phase_progress,
        phase_detail=job.phase_detail,
    )


def write_file(path: Path, status: TrainingStatus) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    files.write_text(path, json.dumps(status.model_dump(mode="json"), indent=2) + "\n")


def refresh_file(session: Session, path: Path) -> TrainingStatus:
    """Write what GET /api/training shows now: called by whoever changed a job's state."""
    current = of_job(jobs.current(session))
    write_file(path, current)
    return current
