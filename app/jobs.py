"""Every job state change, each a single guarded UPDATE, so that no two processes can disagree.

The same statements run on SQLite and on Postgres, except the claim (a guarded UPDATE on SQLite, one
`FOR UPDATE SKIP LOCKED` statement on Postgres, side by side below) and the NOTIFY that wakes idle Postgres
workers when a job is queued or a cancel asked for, sent in the transaction that makes the change.

queued -> running [-> cancelling] -> succeeded | failed | cancelled. A running job belongs to one
(worker_id, attempt) pair; the worker's writes only land while that pair still holds it. A job that stopped
with a complete checkpoint goes back to queued and resumes from it. Terminal states never change, with one
explicit exception asked for by a person: `resume` re-queues a job failed as worker_lost or worker_crashed. A
failure that training.auto_retry heals (`retry`) goes back to queued instead of failed, once per reason. A
requested cancel always ends `cancelled`: no path puts such a job back in the queue.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, func, not_, or_, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app import events, retries, workers
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.wakeup import WAKEUP_CHANNEL, WakeupEvent
from app.events import EventLevel, EventType
from app.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Job, JobKind, JobPhase, JobStatus, Promotion, utcnow
from app.retries import Retry
from app.training_config import ExportRequest, TrainingConfig

# Failures after which a job may be resumed from its checkpoint.
RESUMABLE_ERRORS = frozenset({"worker_lost", "worker_crashed"})


def create(
    session: Session,
    config: TrainingConfig,
    idempotency_key: str | None = None,
    *,
    kind: JobKind = JobKind.training,
    source_job_id: str | None = None,
) -> tuple[Job, bool]:
    """Queue a job. With an idempotency key, a retry returns the job the first request made.

    Returns the job and whether it was created now.
    """
    data = config.model_dump(mode="json")
    # Training jobs hash their config alone, as before export jobs existed, so old keys still replay.
    hashed: dict[str, Any] = data if kind == JobKind.training else {"kind": kind, "source": source_job_id, **data}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, idempotency_key, digest)
        if existing is not None:
            return existing, False
    if kind == JobKind.training:
        _check_gpus(session, config)
    job = Job(config=data, idempotency_key=idempotency_key, request_hash=digest, kind=kind, source_job_id=source_job_id)
    session.add(job)
    what = "export job" if kind == JobKind.export else "job"
    session.add(
        events.new(
            job.id,
            EventType.queued,
            f"{what} queued" + (f" (exporting job {source_job_id})" if source_job_id else ""),
            events.QueuedData(kind=kind.value, source_job_id=source_job_id),
        )
    )
    try:
        session.flush()
        _notify(session, "queued", job.id)
        session.commit()
    except IntegrityError:  # a concurrent request with the same key got there first
        session.rollback()
        existing = _by_idempotency_key(session, idempotency_key or "", digest)
        if existing is None:
            raise
        return existing, False
    session.refresh(job)
    return job, True


def _check_gpus(session: Session, config: TrainingConfig) -> None:
    """Refuse a job no registered worker could ever claim (`fits`); with no worker registered yet it waits."""
    asked, most = config.training.num_gpus, workers.most_gpus(session)
    if asked != "all" and most is not None and asked > most:
        raise InvalidInput(
            f"training.num_gpus is {asked}, but the most GPUs any registered worker has is {most} (GET "
            '/api/training/workers lists them); ask for at most that, or "all" for every GPU of the worker',
            code="not_enough_gpus",
            param="training.num_gpus",
        )


def create_export(
    session: Session,
    source_id: str,
    request: ExportRequest,
    has_adapters: Callable[[Job, str | None], bool],
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Queue an export job for a finished training job: its adapters, merged and exported again, no training.

    A job that failed or was cancelled after saving its adapters (in the export, say) can be exported too.
    """
    source = get(session, source_id)
    if source.kind != JobKind.training:
        raise Conflict(
            f"job {source_id} is an export job; export from the training job {source.source_job_id} instead",
            code="not_a_training_job",
            param="job_id",
        )
    if source.status not in TERMINAL_STATUSES:
        raise Conflict(
            f"job {source_id} is {source.status.value}; export its adapters once it has finished",
            code="job_not_finished",
            param="job_id",
        )
    if request.checkpoint is not None and not has_adapters(source, request.checkpoint):
        raise InvalidInput(
            f"job {source_id} has no checkpoint {request.checkpoint!r} with adapters; GET "
            f"/api/training/jobs/{source_id}/checkpoints lists the ones it has",
            code="no_such_checkpoint",
            param="checkpoint",
        )
    if request.checkpoint is None and not has_adapters(source, None):
        raise Conflict(
            f"job {source_id} ({source.status.value}) has no LoRA adapters in its run folder (save.lora_path): "
            "it stopped before saving them, or they were removed; train it again",
            code="no_adapters",
            param="job_id",
        )
    config = TrainingConfig.model_validate(source.config)
    # The source's lora_path stays: the export job reads the adapters from the source's run folder.
    config.save = config.save.model_copy(update=request.model_dump(exclude={"checkpoint"}))
    if request.checkpoint is not None:  # a trainer checkpoint holds adapters too: read from there instead
        config.save.lora_path = f"{config.training.output_dir.rstrip('/')}/{request.checkpoint}"
    return create(session, config, idempotency_key, kind=JobKind.export, source_job_id=source.id)


def _notify(session: Session, event: WakeupEvent, job_id: str) -> None:
    """Wake the workers waiting on Postgres (delivered when this transaction commits, never before); SQLite
    workers find the change at their next poll."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": WAKEUP_CHANNEL, "payload": f"{event}:{job_id}"}
        )


def _by_idempotency_key(session: Session, key: str, digest: str) -> Job | None:
    job = session.exec(select(Job).where(Job.idempotency_key == key)).first()
    if job is not None and job.request_hash != digest:
        raise Conflict(
            "this Idempotency-Key was already used for a different request; use a new key for a new job",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return job


def get(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}; list jobs with GET /api/training/jobs", param="job_id")
    return job


def page(session: Session, *, limit: int, offset: int) -> tuple[list[Job], int]:
    total = session.exec(select(func.count()).select_from(Job)).one()
    rows = session.exec(
        select(Job).order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), int(total)


def current(session: Session) -> Job | None:
    """The running job, else the most recently created one."""
    running = session.exec(
        select(Job).where(col(Job.status).in_(ACTIVE_STATUSES)).order_by(col(Job.started_at).desc()).limit(1)
    ).first()
    if running is not None:
        return running
    return session.exec(select(Job).order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(1)).first()


def request_cancel(session: Session, job_id: str) -> Job:
    """Cancel a queued job at once; a running one becomes `cancelling` until its worker has stopped it."""
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(and_(col(Job.id) == job_id, col(Job.status) == JobStatus.queued))
        .values(
            status=JobStatus.cancelled,
            phase=JobPhase.done,
            cancel_requested=True,
            cancel_requested_at=now,
            finished_at=now,
            updated_at=now,
        )
    )
    if queued.rowcount == 1:  # type: ignore[attr-defined]
        events.add(session, _cancel_events(job_id, JobStatus.cancelled))
    else:
        running = session.execute(
            update(Job)
            .where(and_(col(Job.id) == job_id, col(Job.status) == JobStatus.running))
            .values(status=JobStatus.cancelling, cancel_requested=True, cancel_requested_at=now, updated_at=now)
        )
        if running.rowcount == 1:  # type: ignore[attr-defined]
            events.add(session, _cancel_events(job_id, JobStatus.cancelling))
        _notify(session, "cancel", job_id)
    session.commit()
    job = get(session, job_id)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise Conflict(
            f"job {job_id} already {job.status.value}; only queued or running jobs can be cancelled",
            code="job_finished",
            param="job_id",
        )
    return job


def _cancel_events(job_id: str, status: JobStatus) -> list[events.Event]:
    asked = events.new(
        job_id,
        EventType.cancel_requested,
        "cancel requested"
        + ("; the job stops at the end of its current step" if status == JobStatus.cancelling else ""),
        events.CancelData(status=status.value),
    )
    if status != JobStatus.cancelled:
        return [asked]
    return [asked, _finished_event(job_id, JobStatus.cancelled, None, None)]


def _finished_event(job_id: str, status: JobStatus, error_code: str | None, error_message: str | None) -> events.Event:
    data = events.FinishedData(status=status.value, error_code=error_code, error_message=error_message)
    if status == JobStatus.failed:
        message = f"job failed ({error_code}): {error_message}"
        return events.new(job_id, EventType.failed, message, data, EventLevel.error)
    return events.new(job_id, EventType(status.value), f"job {status.value}", data)


def _requeued_event(job_id: str, reason: str, checkpoint: str | None, retried: Retry | None = None) -> events.Event:
    where = f"resumes from {checkpoint}" if checkpoint else "starts over"
    changes = retried.changes if retried else None
    data = events.RequeuedData(reason=reason, resume_from=checkpoint, changes=changes)  # type: ignore[arg-type]
    message = retries.describe(retried) if retried else f"back in the queue ({reason}); {where}"
    return events.new(job_id, EventType.requeued, message, data, EventLevel.warning if retried else EventLevel.info)


def fits(gpus: int) -> Any:
    """The jobs a worker with `gpus` GPUs can run: training.num_gpus at most that, or "all" (old jobs, without the
    key, ask for one); an export job runs in one process whatever its config says."""
    asked = cast(col(Job.config)[("training", "num_gpus")].as_string(), String)  # '2' or 'all' on both databases
    return or_(col(Job.kind) != JobKind.training, func.coalesce(asked, "1").in_([*map(str, range(1, gpus + 1)), "all"]))


def claim_next(session: Session, worker_id: str, lease_seconds: float, gpus: int = 1) -> Job | None:
    """Take the oldest queued job that fits a worker with `gpus` GPUs (`fits`), exclusively across processes and
    hosts; a job asking for more waits for a worker that has them."""
    if session.get_bind().dialect.name == "postgresql":
        return _claim_skip_locked(session, worker_id, lease_seconds, gpus)
    return _claim_guarded(session, worker_id, lease_seconds, gpus)


def _claimed_values(worker_id: str, lease_seconds: float) -> dict[str, Any]:
    now = utcnow()
    return {
        "status": JobStatus.running,
        "phase": JobPhase.starting,
        "worker_id": worker_id,
        "attempt": Job.attempt + 1,  # type: ignore[operator]
        "started_at": now,
        "updated_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        # The accepted model now (the newest promotion): what this attempt's no-regression gate compares with.
        "accepted_job_id": select(Promotion.job_id).order_by(col(Promotion.id).desc()).limit(1).scalar_subquery(),
    }


def _oldest_queued(gpus: int) -> Any:
    """The oldest queued job a worker with `gpus` GPUs can run."""
    return (
        select(Job.id)
        .where(Job.status == JobStatus.queued, fits(gpus))
        .order_by(col(Job.created_at), col(Job.id))
        .limit(1)
    )


def _claim_guarded(session: Session, worker_id: str, lease_seconds: float, gpus: int) -> Job | None:
    """SQLite: pick the oldest, then take it with an UPDATE guarded by its status; a lost race looks again.

    SQLite has one writer at a time, so the loser's UPDATE matches nothing and costs one more look.
    """
    while True:
        candidate = session.exec(_oldest_queued(gpus)).first()
        if candidate is None:
            return None
        claimed = session.execute(
            update(Job)
            .where(and_(col(Job.id) == candidate, col(Job.status) == JobStatus.queued))
            .values(**_claimed_values(worker_id, lease_seconds))
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            attempt, resume_from = session.execute(
                select(Job.attempt, Job.resume_from).where(Job.id == candidate)
            ).one()
            message = f"started on worker {worker_id} (attempt {attempt})"
            if resume_from:
                message += f", resuming from {resume_from}"
            data = events.StartedData(attempt=attempt, worker_id=worker_id, resume_from=resume_from)
            session.add(events.new(candidate, EventType.started, message, data))
        session.commit()
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            return get(session, candidate)
        # Another worker won this one; look again.


def _claim_skip_locked(session: Session, worker_id: str, lease_seconds: float, gpus: int) -> Job | None:
    """Postgres: one statement. The row lock taken by FOR UPDATE SKIP LOCKED makes concurrent claimers step
    over each other's candidates instead of queueing behind them (as procrastinate and pgqueuer claim)."""
    oldest = _oldest_queued(gpus).with_for_update(skip_locked=True).scalar_subquery()
    claimed = session.execute(
        update(Job)
        .where(col(Job.id) == oldest)
        .values(**_claimed_values(worker_id, lease_seconds))
        .returning(col(Job.id))
    ).scalar_one_or_none()
    session.commit()
    return None if claimed is None else get(session, claimed)


def _owned(job_id: str, worker_id: str, attempt: int) -> Any:
    return and_(
        col(Job.id) == job_id,
        col(Job.status).in_(ACTIVE_STATUSES),
        col(Job.worker_id) == worker_id,
        col(Job.attempt) == attempt,
    )


def renew_lease(session: Session, job: Job, lease_seconds: float) -> bool | None:
    """Extend the lease. Returns whether a cancel was requested, or None if the job is no longer ours."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_owned(job.id, job.worker_id or "", job.attempt))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    status = session.exec(select(Job.status).where(Job.id == job.id)).one()
    return status == JobStatus.cancelling


def record_progress(session: Session, job: Job, new_events: Sequence[events.Event] = (), **fields: Any) -> bool:
    """Write progress fields (step, loss, phase, ...) and the events since the last write, while the job is
    still ours: one transaction for all of them."""
    fields["updated_at"] = utcnow()
    result = session.execute(update(Job).where(_owned(job.id, job.worker_id or "", job.attempt)).values(**fields))
    if result.rowcount == 1:  # type: ignore[attr-defined]
        events.add(session, new_events)
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def finish(
    session: Session,
    job: Job,
    status: JobStatus,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Move a running job we own to a terminal state. A job that fails after a cancel was asked for ends
    `cancelled`: the person wanted it stopped, and it has stopped."""
    assert status in TERMINAL_STATUSES
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "phase": JobPhase.done,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "eta_seconds": 0 if status == JobStatus.succeeded else None,
        "phase_progress": None,
        "phase_detail": None,
        "error_code": error_code,
        "error_message": error_message,
    }
    if result is not None:
        values["result"] = result
    owned = _owned(job.id, job.worker_id or "", job.attempt)
    if status == JobStatus.succeeded:  # the work is done and its files are there: a late cancel changes nothing
        outcome = session.execute(update(Job).where(owned).values(**values))
        if outcome.rowcount == 1:  # type: ignore[attr-defined]
            session.add(_finished_event(job.id, status, error_code, error_message))
        session.commit()
        return outcome.rowcount == 1  # type: ignore[attr-defined, no-any-return]
    return _unless_cancelled(session, job.id, owned, values, "") is not None


def requeue(session: Session, job: Job, checkpoint: str | None) -> JobStatus | None:
    """Put a job we own back in the queue, to resume from `checkpoint` (graceful worker shutdown); a job whose
    cancel was asked for is cancelled instead. Returns the new status, or None if the job was no longer ours."""
    owned = _owned(job.id, job.worker_id or "", job.attempt)
    return _unless_cancelled(session, job.id, owned, _requeued(checkpoint), "shutdown")


def retry(session: Session, job: Job, retry: Retry, config: dict[str, Any]) -> JobStatus | None:
    """Put a job we own that failed back in the queue with `config` (training.auto_retry, app.retries), the retry
    recorded in its `retries`; a job whose cancel was asked for is cancelled instead."""
    owned = _owned(job.id, job.worker_id or "", job.attempt)
    values = {**_requeued(retry.resume_from), "config": config, "retries": [*job.retries, retry.model_dump()]}
    return _unless_cancelled(session, job.id, owned, values, retry.reason, retry)


def give_up(session: Session, job: Job, checkpoint: str | None) -> JobStatus | None:
    """Settle a job we own whose lease we could not keep (the database was out of reach for longer than the
    lease, so the training process ended itself): as `expire_lost` would settle it once the lease runs out."""
    owned = _owned(job.id, job.worker_id or "", job.attempt)
    return _unless_cancelled(session, job.id, owned, _lost(job, checkpoint), "worker_lost")


def _unless_cancelled(
    session: Session, job_id: str, where: Any, values: dict[str, Any], reason: str, retried: Retry | None = None
) -> JobStatus | None:
    """Apply `values` to the job `where` matches, unless a cancel was requested for it: then it ends `cancelled`.

    A requested cancel ends `cancelled` whatever else happens (a worker shutdown, a crash, a lost lease): such a
    job must never go back to the queue, where another worker would run it again. The job's event (finished, or
    back in the queue for `reason`) is written with it, and a job put back in the queue wakes the idle workers.
    Returns the status written, or None when `where` matched nothing.
    """
    now = utcnow()
    stopped = session.execute(update(Job).where(and_(where, col(Job.cancel_requested))).values(**_cancelled(now)))
    status: JobStatus | None = JobStatus.cancelled if stopped.rowcount == 1 else None  # type: ignore[attr-defined]
    if status is None:
        outcome = session.execute(update(Job).where(and_(where, not_(col(Job.cancel_requested)))).values(**values))
        status = values["status"] if outcome.rowcount == 1 else None  # type: ignore[attr-defined]
    if status == JobStatus.cancelled:
        session.add(_finished_event(job_id, status, None, None))
    elif status is not None:
        if status == JobStatus.queued:
            session.add(_requeued_event(job_id, reason, values["resume_from"], retried))
        else:
            session.add(_finished_event(job_id, status, values.get("error_code"), values.get("error_message")))
    if status == JobStatus.queued:
        _notify(session, "queued", job_id)
    session.commit()
    return status


def _cancelled(now: datetime) -> dict[str, Any]:
    return {
        "status": JobStatus.cancelled,
        "phase": JobPhase.done,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "eta_seconds": None,
        "phase_progress": None,
        "phase_detail": None,
        "error_code": None,
        "error_message": None,
    }


def _requeued(checkpoint: str | None) -> dict[str, Any]:
    return {
        "status": JobStatus.queued,
        "phase": JobPhase.queued,
        "worker_id": None,
        "lease_expires_at": None,
        "eta_seconds": None,
        "resume_from": checkpoint,
        "updated_at": utcnow(),
    }


def _lost(job: Job, checkpoint: str | None) -> dict[str, Any]:
    """A job whose worker lost it: back to the queue from its checkpoint where allowed, else failed `worker_lost`."""
    if (checkpoint or job.kind == JobKind.export) and job.training_config.training.resume_on_worker_lost:
        # An export job keeps nothing between attempts: it starts over.
        return _requeued(checkpoint)
    now = utcnow()
    return {
        "status": JobStatus.failed,
        "phase": JobPhase.done,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "error_code": "worker_lost",
        "error_message": (
            "the worker running this job stopped reporting (killed, stalled, its machine or its database lost); "
            + ("resume it with POST .../resume" if checkpoint else "submit the job again")
        ),
    }


def resume(session: Session, job_id: str, checkpoint_of: Callable[[Job], str | None]) -> Job:
    """Queue a job that a lost or crashed worker left behind again, from its last complete checkpoint."""
    job = get(session, job_id)
    if job.status != JobStatus.failed or job.error_code not in RESUMABLE_ERRORS:
        raise Conflict(
            f"job {job_id} is {job.status.value}"
            + (f" ({job.error_code})" if job.error_code else "")
            + "; only jobs whose worker was lost or crashed can be resumed",
            code="not_resumable",
            param="job_id",
        )
    checkpoint = checkpoint_of(job)
    if checkpoint is None and job.kind != JobKind.export:  # an export job starts over
        raise Conflict(
            f"job {job_id} has no complete checkpoint to resume from; set training.save_steps to keep "
            "checkpoints, and submit the job again",
            code="no_checkpoint",
            param="job_id",
        )
    values = _requeued(checkpoint) | {"error_code": None, "error_message": None, "finished_at": None}
    resumed = session.execute(
        update(Job)
        .where(and_(col(Job.id) == job_id, col(Job.status) == JobStatus.failed, col(Job.error_code) == job.error_code))
        .values(**values)
    )
    if resumed.rowcount == 1:  # type: ignore[attr-defined]
        session.add(_requeued_event(job_id, "resume", checkpoint))
    _notify(session, "queued", job_id)
    session.commit()
    return get(session, job_id)


def expire_lost(
    session: Session, now: datetime | None = None, checkpoint_of: Callable[[Job], str | None] | None = None
) -> list[tuple[str, JobStatus]]:
    """Settle running jobs whose worker stopped renewing the lease (killed, stalled, machine lost).

    A job that allows it and has a complete checkpoint goes back to the queue to resume from it; a job whose
    cancel was requested is cancelled; any other fails as `worker_lost`.
    """
    now = now or utcnow()
    expired = and_(
        col(Job.status).in_(ACTIVE_STATUSES),
        or_(col(Job.lease_expires_at).is_(None), col(Job.lease_expires_at) < now),
    )
    settled = []
    for job in session.exec(select(Job).where(expired)).all():
        checkpoint = checkpoint_of(job) if checkpoint_of else None
        status = _unless_cancelled(
            session,
            job.id,
            and_(col(Job.id) == job.id, col(Job.attempt) == job.attempt, expired),
            _lost(job, checkpoint),
            "worker_lost",
        )
        if status is not None:
            settled.append((job.id, status))
    return settled
