"""The API's request and response schemas (the job table itself is app.models.Job)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField

from app.models import EvaluationProgress, GatesReport, Job, JobKind, JobPhase, JobStatus, Promotion, evaluation_of
from app.retries import Retry


class ErrorDetail(BaseModel):
    param: str = PydanticField(description="The field at fault, dotted: `training.learning_rate`.")
    message: str
    type: str
    # A bad dataset row (code dataset_invalid): where it is.
    file: str | None = PydanticField(default=None, description="Dataset file, relative to the project.")
    line: int | None = PydanticField(default=None, description="1-based line of the bad row.")
    field: str | None = PydanticField(default=None, description="Field of the row at fault, e.g. `output`.")


class ErrorBody(BaseModel):
    """Every error the API returns has this shape."""

    code: str = PydanticField(description="Stable, machine-readable reason, e.g. `dataset_not_found`.")
    message: str = PydanticField(description="What is wrong and how to fix it.")
    param: str | None = PydanticField(description="The field, header or path part at fault, if one is.")
    details: list[ErrorDetail] | None = PydanticField(default=None, description="Each invalid field (422).")


class JobError(BaseModel):
    code: str = PydanticField(description="Stable, machine-readable reason, e.g. `dataset_invalid`.")
    message: str = PydanticField(description="What went wrong and what to do about it.")


class JobRead(BaseModel):
    """A job as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: JobKind = PydanticField(description="training, or export (a finished job's adapters exported again).")
    source_job_id: str | None = PydanticField(description="For an export job: the training job it exports.")
    status: JobStatus
    phase: JobPhase
    phase_progress: float | None = PydanticField(description="0-1 within the current phase, outside training.")
    phase_detail: str | None = PydanticField(description="What the current phase is doing, e.g. which GGUF.")
    backend: str | None = PydanticField(description="The backend that ran it, once the worker has chosen.")
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    checkpoint_at: datetime | None
    worker_id: str | None
    attempt: int = PydanticField(description="How many times a worker has started this job (resumes count).")
    resume_from: str | None = PydanticField(description="Checkpoint the next attempt resumes from, if any.")
    accepted_job_id: str | None = PydanticField(
        default=None, description="The project's accepted model when the job started: what no-regression compared."
    )
    step: int
    total_steps: int | None
    epoch: float = PydanticField(description="Fractional epochs done, e.g. 1.35.")
    total_epochs: float | None
    loss: float | None
    learning_rate: float | None
    eta_seconds: float | None
    tokens_per_second: float | None
    error: JobError | None
    result: dict[str, Any] | None = PydanticField(
        description="Training statistics, baseline and evaluation metrics and gates once finished; while running, "
        "what is known so far (the baseline's metrics, evaluation progress)."
    )
    evaluation: EvaluationProgress | None = PydanticField(
        default=None, description="Progress of the baseline or evaluate step (the last one run, once finished)."
    )
    gates: GatesReport | None = PydanticField(default=None, description="The gates, once the job has run them.")
    retries: list[Retry] = PydanticField(
        default_factory=list, description="Automatic retries (training.auto_retry): why, and what each changed."
    )
    config: dict[str, Any] = PydanticField(
        description="The training config as submitted, defaults filled in; after an automatic retry, as retried."
    )

    @classmethod
    def from_job(cls, job: Job) -> JobRead:
        data = {name: getattr(job, name) for name in cls.model_fields if name not in ("error", "evaluation", "gates")}
        error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
        gates, progress = evaluation_of(job)
        return cls(**data, error=error, evaluation=progress, gates=gates)


class JobPage(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class ArtifactRead(BaseModel):
    name: str = PydanticField(description="Path inside the job's run folder; use it in the download URL.")
    kind: str = PydanticField(
        description="lora, merged, gguf, modelfile, checkpoint, log, metrics, release (release.json) or other."
    )
    bytes: int
    sha256: str


class ArtifactList(BaseModel):
    job_id: str
    items: list[ArtifactRead]


class WorkerRead(BaseModel):
    """A registered worker process (python -m worker), on this host or another."""

    id: str = PydanticField(description="FORGE_WORKER_ID, else <host>:<pid>; the jobs it claims show it.")
    host: str
    pid: int
    gpus: list[int] = PydanticField(description="The GPU indices it trains on (FORGE_WORKER_GPUS); empty: CPU.")
    current_job_id: str | None = PydanticField(description="The job it runs now, if any.")
    started_at: datetime
    last_heartbeat_at: datetime
    alive: bool = PydanticField(
        description="Its last heartbeat is younger than FORGE_LEASE_SECONDS; a worker killed without stopping "
        "stays listed, not alive, for a day."
    )


class WorkerList(BaseModel):
    items: list[WorkerRead]


class PromoteRequest(BaseModel):
    """Why a job is promoted, and by whom: kept with the promotion."""

    model_config = ConfigDict(extra="forbid")

    note: str | None = PydanticField(default=None, max_length=4000, description="Why this model is accepted.")
    by: str | None = PydanticField(default=None, min_length=1, max_length=255, description="Who promotes it.")


class AcceptedModel(BaseModel):
    """The project's accepted model: the promoted job, who promoted it, when and why, and how it scored."""

    job_id: str
    promoted_at: datetime
    promoted_by: str | None
    note: str | None
    metrics: dict[str, Any] | None = PydanticField(
        description="The job's evaluate metrics on its test split (metrics/evaluation.json), what new jobs must not "
        "fall below by more than gates.max_regression."
    )
    gates: GatesReport | None = PydanticField(description="The job's gates.")

    @classmethod
    def of(cls, promotion: Promotion, job: Job) -> AcceptedModel:
        evaluation = (job.result or {}).get("evaluation")
        metrics = evaluation.get("metrics") if isinstance(evaluation, dict) else None
        return cls(
            job_id=promotion.job_id,
            promoted_at=promotion.promoted_at,
            promoted_by=promotion.promoted_by,
            note=promotion.note,
            metrics=metrics,
            gates=evaluation_of(job)[0],
        )
