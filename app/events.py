"""A job's events: what happened to it and when, stored in the database and read by cursor.

The API (queued, cancel requested, cancelled while queued) and the worker (started, phases, metrics,
checkpoints, evaluation, gates, the outcome) write them, each in the same transaction as the state change it
describes, so an event never tells of a change that did not land. The id is the cursor: SQLite hands out
row ids while holding the write lock, so ids are assigned in commit order and a reader that has seen id N
never later finds a new event with a smaller one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, Session, SQLModel, col, select

from app.models import UTCDateTime, utcnow, varchar_enum


class EventType(enum.StrEnum):
    """Every kind of event; the `data` payload of each is the model named in PAYLOADS."""

    queued = "queued"  #: The job was submitted (or an export of a finished job asked for).
    started = "started"  #: A worker claimed the job and began an attempt.
    phase = "phase"  #: The job entered a phase of the spec's order (loading_model, training, ...).
    metrics = "metrics"  #: The trainer logged metrics (every training.logging_steps, and each evaluation).
    checkpoint = "checkpoint"  #: A checkpoint or the final adapters were written.
    evaluation = "evaluation"  #: Progress of the baseline or evaluate step, and its metrics when done.
    gate = "gate"  #: One gate's verdict.
    cancel_requested = "cancel_requested"  #: Someone asked to cancel the job.
    requeued = "requeued"  #: The job went back to the queue (worker shutdown or lost, a resume, an auto retry).
    succeeded = "succeeded"  #: Terminal: the job finished.
    failed = "failed"  #: Terminal: the job failed; the error is in `data`.
    cancelled = "cancelled"  #: Terminal: the job was cancelled.


TERMINAL_TYPES = frozenset({EventType.succeeded, EventType.failed, EventType.cancelled})


class EventLevel(enum.StrEnum):
    info = "info"
    warning = "warning"
    error = "error"


class Event(SQLModel, table=True):
    """One thing that happened to a job. `id` only grows: it is the cursor of the list and the stream."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_job_id", "job_id", "id"), {"sqlite_autoincrement": True})

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    level: EventLevel = Field(default=EventLevel.info, sa_type=varchar_enum(EventLevel), nullable=False)
    type: EventType = Field(sa_type=varchar_enum(EventType), nullable=False)
    message: str
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


# ---------------------------------------------------------------- payloads, one per type


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueuedData(_Payload):
    kind: str = PydanticField(description="training or export.")
    source_job_id: str | None = PydanticField(default=None, description="An export job's training job.")


class StartedData(_Payload):
    attempt: int
    worker_id: str
    resume_from: str | None = PydanticField(default=None, description="The checkpoint this attempt resumes from.")


class PhaseData(_Payload):
    phase: str


class MetricsData(_Payload):
    step: int
    epoch: float
    metrics: dict[str, float | None] = PydanticField(
        description="What the trainer logged: loss, learning_rate, grad_norm, eval_loss, ..."
    )


class CheckpointData(_Payload):
    path: str | None = PydanticField(description="Inside the job's run folder; null for a scored checkpoint.")
    step: int | None = PydanticField(default=None, description="The training step; null for the final adapters.")
    metric: str | None = PydanticField(default=None, description="training.select_checkpoint: gates.metric.")
    score: float | None = PydanticField(default=None, description="The checkpoint's validation score.")


class EvaluationData(_Payload):
    stage: Literal["baseline", "evaluate"]
    done: int
    total: int
    metrics: dict[str, Any] | None = PydanticField(default=None, description="Once the stage is scored.")


class GateData(_Payload):
    name: str
    status: str
    details: dict[str, Any] = PydanticField(default_factory=dict)


class CancelData(_Payload):
    status: str = PydanticField(description="The job's status after the request: cancelled or cancelling.")


class RequeuedData(_Payload):
    reason: Literal["shutdown", "worker_lost", "resume", "out_of_memory", "diverged"]
    resume_from: str | None = None
    changes: dict[str, list[Any]] | None = None  # an automatic retry's (app.retries): field: [as run, as retried]


class FinishedData(_Payload):
    status: str
    error_code: str | None = None
    error_message: str | None = None


PAYLOADS: dict[EventType, type[_Payload]] = {
    EventType.queued: QueuedData,
    EventType.started: StartedData,
    EventType.phase: PhaseData,
    EventType.metrics: MetricsData,
    EventType.checkpoint: CheckpointData,
    EventType.evaluation: EvaluationData,
    EventType.gate: GateData,
    EventType.cancel_requested: CancelData,
    EventType.requeued: RequeuedData,
    EventType.succeeded: FinishedData,
    EventType.failed: FinishedData,
    EventType.cancelled: FinishedData,
}


def new(job_id: str, kind: EventType, message: str, data: _Payload, level: EventLevel = EventLevel.info) -> Event:
    """An event, not yet added to a session; its payload must be the model PAYLOADS names for its type."""
    if not isinstance(data, PAYLOADS[kind]):
        raise TypeError(f"a {kind.value} event takes {PAYLOADS[kind].__name__}, not {type(data).__name__}")
    return Event(job_id=job_id, type=kind, message=message, data=data.model_dump(mode="json"), level=level)


def add(session: Session, events: Iterable[Event]) -> None:
    """Add events to the session's transaction; the caller commits them with the change they describe."""
    for event in events:
        session.add(event)


def after(session: Session, job_id: str, cursor: int, limit: int) -> tuple[list[Event], bool]:
    """The job's events with an id above `cursor`, oldest first, and whether more follow."""
    rows = session.exec(
        select(Event).where(Event.job_id == job_id, col(Event.id) > cursor).order_by(col(Event.id)).limit(limit + 1)
    ).all()
    return list(rows[:limit]), len(rows) > limit


def before(session: Session, job_id: str, cursor: int | None, limit: int) -> tuple[list[Event], bool]:
    """The job's events with an id below `cursor` (all when None), newest first, and whether more follow."""
    query = select(Event).where(Event.job_id == job_id)
    if cursor is not None:
        query = query.where(col(Event.id) < cursor)
    rows = session.exec(query.order_by(col(Event.id).desc()).limit(limit + 1)).all()
    return list(rows[:limit]), len(rows) > limit


# ---------------------------------------------------------------- API schemas


class EventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = PydanticField(description="Grows with every event; pass the last one seen as `after`.")
    job_id: str
    created_at: datetime
    level: EventLevel
    type: EventType
    message: str
    data: dict[str, Any] = PydanticField(description="The type's payload (see app/events.py PAYLOADS).")


class EventPage(BaseModel):
    job_id: str
    items: list[EventRead]
    has_more: bool = PydanticField(description="More events follow: ask again with after=<the last id>.")
    last_id: int | None = PydanticField(description="The cursor for the next page (the last item's id).")


def read(rows: Sequence[Event]) -> list[EventRead]:
    return [EventRead.model_validate(row) for row in rows]
