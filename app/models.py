"""The job table, job states and the gate results, shared by the API and the worker (the boundary between the
two is the database). API request and response schemas are in app/api/schemas.py."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, Enum, Index
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel

from app.training_config import TrainingConfig


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC without an offset (SQLite has no time zones) and gives back aware datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class JobStatus(enum.StrEnum):
    """queued -> running [-> cancelling] -> succeeded | failed | cancelled; terminal states never change."""

    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
# A worker owns the job in these states: it renews the lease and writes progress.
ACTIVE_STATUSES = frozenset({JobStatus.running, JobStatus.cancelling})


class JobPhase(enum.StrEnum):
    """Where a job is, in the spec's order."""

    queued = "queued"
    starting = "starting"
    loading_model = "loading_model"
    attaching_lora = "attaching_lora"
    preparing_data = "preparing_data"
    baseline = "baseline"
    training = "training"
    saving = "saving"
    evaluate = "evaluate"
    exporting = "exporting"
    done = "done"


class JobKind(enum.StrEnum):
    """training: fine-tune, save and export; export: export a finished training job's adapters again."""

    training = "training"
    export = "export"


class GateName(enum.StrEnum):
    """The spec's gates, plus loss-converged (the spec's "Loss converged (not diverging)" as its own gate) and
    no-regression (no worse than the project's accepted model on the same test split)."""

    baseline_established = "baseline-established"
    model_performance = "model-performance"
    loss_converged = "loss-converged"
    quantization_verified = "quantization-verified"
    no_regression = "no-regression"


class GateStatus(enum.StrEnum):
    passed = "passed"
    failed = "failed"
    not_run = "not_run"


def varchar_enum(values: type[enum.Enum]) -> Any:
    """A state column as plain text, on Postgres too: a native enum type would need an ALTER TYPE in every
    migration that adds a state, and SQLite has none anyway (its columns stay as they were)."""
    return Enum(values, native_enum=False)


def _when(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable)


class Job(SQLModel, table=True):
    """One fine-tuning job: its config as submitted, where it is, and how it ended."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_status_created", "status", "created_at"),)

    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=32)
    kind: JobKind = Field(default=JobKind.training, sa_type=varchar_enum(JobKind), nullable=False)
    # An export job works on this (succeeded) training job's adapters.
    source_job_id: str | None = Field(default=None, max_length=32)
    status: JobStatus = Field(default=JobStatus.queued, sa_type=varchar_enum(JobStatus), nullable=False)
    phase: JobPhase = Field(default=JobPhase.queued, sa_type=varchar_enum(JobPhase), nullable=False)
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    backend: str | None = Field(default=None, max_length=16)

    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    started_at: datetime | None = _when()
    finished_at: datetime | None = _when()
    checkpoint_at: datetime | None = _when()

    cancel_requested: bool = Field(default=False)
    cancel_requested_at: datetime | None = _when()

    worker_id: str | None = Field(default=None, max_length=128)
    attempt: int = Field(default=0)
    lease_expires_at: datetime | None = _when()

    step: int = Field(default=0)
    total_steps: int | None = None
    epoch: float = Field(default=0.0)
    total_epochs: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    eta_seconds: float | None = None
    tokens_per_second: float | None = None
    # Progress inside a long phase other than training (exporting: converting, quantizing, verifying).
    phase_progress: float | None = None
    phase_detail: str | None = Field(default=None, max_length=512)

    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))

    # The project's accepted model when a worker claimed the job: the no-regression gate compares with it.
    accepted_job_id: str | None = Field(default=None, max_length=32)
    # Each automatic retry (training.auto_retry), as app.retries.Retry: why, at which step, what it changed.
    retries: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    # The training checkpoint the next attempt resumes from (a folder inside the job's run folder).
    resume_from: str | None = Field(default=None, max_length=512)
    # A retried POST with the same Idempotency-Key returns this job; request_hash tells retries from reuse.
    idempotency_key: str | None = Field(default=None, max_length=255, unique=True)
    request_hash: str | None = Field(default=None, max_length=64)

    @property
    def training_config(self) -> TrainingConfig:
        """The job's config as the validated model (it was validated at submission; defaults filled in)."""
        return TrainingConfig.model_validate(self.config)


class WorkerRecord(SQLModel, table=True):
    """A worker process that has registered with the queue (python -m worker), on this host or another.

    Which job it runs is not kept here: the job table says so (job.worker_id), once.
    """

    __tablename__ = "worker"

    id: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=255)
    pid: int
    # The GPU indices this worker trains on (FORGE_WORKER_GPUS); empty on a CPU-only worker.
    gpus: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Promotion(SQLModel, table=True):
    """A training job marked as the project's accepted model, by whom and why. The newest row is the accepted model
    (one per database, i.e. per FORGE_PROJECT_DIR); older rows are the history."""

    __tablename__ = "promotion"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=32, index=True)
    promoted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    promoted_by: str | None = Field(default=None, max_length=255)
    note: str | None = None


# ---------------------------------------------------------------- gates and evaluation, kept in a job's result


class GateResult(BaseModel):
    name: GateName
    status: GateStatus
    message: str = PydanticField(description="Why it passed, failed or did not run, with the numbers.")
    details: dict[str, Any] = PydanticField(default_factory=dict, description="The numbers the gate compared.")


class GatesReport(BaseModel):
    """metrics/gates.json, as the job and the API show it."""

    passed: bool = PydanticField(description="No gate failed (gates that did not run do not count).")
    required: bool = PydanticField(description="gates.required: a failed gate fails the job.")
    metric: str = PydanticField(description="The metric model-performance compared (gates.metric).")
    gates: list[GateResult]


class EvaluationProgress(BaseModel):
    """Where the baseline or evaluate step is: test examples answered so far."""

    stage: Literal["baseline", "evaluate"]
    done: int
    total: int


def evaluation_of(job: Job) -> tuple[GatesReport | None, EvaluationProgress | None]:
    """The gates and the evaluation progress the worker keeps in the job's result."""
    result = job.result or {}
    gates = result.get("gates")
    progress = result.get("evaluation_progress")
    return (
        GatesReport.model_validate(gates) if isinstance(gates, dict) else None,
        EvaluationProgress.model_validate(progress) if isinstance(progress, dict) else None,
    )
