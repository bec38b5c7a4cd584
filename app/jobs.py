"""Every job state change, each a single guarded UPDATE, so that no two processes can disagree.

queued -> running -> succeeded | failed | cancelled; terminal states never change. A running job
belongs to one (worker_id, attempt) pair; the worker's writes only land while that pair still holds it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlmodel import Session, col, select

from app.core.errors import Conflict, NotFound
from app.models import TERMINAL_STATUSES, Job, JobPhase, JobStatus, utcnow
from app.training_config import TrainingConfig


def create(session: Session, config: TrainingConfig) -> Job:
    job = Job(config=config.model_dump(mode="json"))
    session.add(job)
    session.commit()
    session.refresh(job)
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
        select(Job).where(Job.status == JobStatus.running).order_by(col(Job.started_at).desc()).limit(1)
    ).first()
    if running is not None:
        return running
    return session.exec(select(Job).order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(1)).first()


def request_cancel(session: Session, job_id: str) -> Job:
    """Cancel a queued job at once; ask the worker to stop a running one within a step."""
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
    if queued.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(
            update(Job)
            .where(and_(col(Job.id) == job_id, col(Job.status) == JobStatus.running, ~col(Job.cancel_requested)))
            .values(cancel_requested=True, cancel_requested_at=now, updated_at=now)
        )
    session.commit()
    job = get(session, job_id)
    if job.status in TERMINAL_STATUSES and job.status != JobStatus.cancelled:
        raise Conflict(
            f"job {job_id} already {job.status.value}; only queued or running jobs can be cancelled",
            code="job_finished",
            param="job_id",
        )
    return job


def claim_next(session: Session, worker_id: str, lease_seconds: float) -> Job | None:
    """Take the oldest queued job. The status guard makes the claim exclusive across processes."""
    while True:
        candidate = session.exec(
            select(Job.id).where(Job.status == JobStatus.queued).order_by(col(Job.created_at), col(Job.id)).limit(1)
        ).first()
        if candidate is None:
            return None
        now = utcnow()
        claimed = session.execute(
            update(Job)
            .where(and_(col(Job.id) == candidate, col(Job.status) == JobStatus.queued))
            .values(
                status=JobStatus.running,
                phase=JobPhase.starting,
                worker_id=worker_id,
                attempt=Job.attempt + 1,  # type: ignore[operator]
                started_at=now,
                updated_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
        )
        session.commit()
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            return get(session, candidate)
        # Another worker won this one; look again.


def _owned(job_id: str, worker_id: str, attempt: int) -> Any:
    return and_(
        col(Job.id) == job_id,
        col(Job.status) == JobStatus.running,
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
    cancel = session.exec(select(Job.cancel_requested).where(Job.id == job.id)).one()
    return bool(cancel)


def record_progress(session: Session, job: Job, **fields: Any) -> bool:
    """Write progress fields (step, loss, phase, ...) while the job is still ours."""
    fields["updated_at"] = utcnow()
    result = session.execute(update(Job).where(_owned(job.id, job.worker_id or "", job.attempt)).values(**fields))
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
    """Move a running job we own to a terminal state."""
    assert status in TERMINAL_STATUSES
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "phase": JobPhase.done,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "eta_seconds": 0 if status == JobStatus.succeeded else None,
        "error_code": error_code,
        "error_message": error_message,
    }
    if result is not None:
        values["result"] = result
    outcome = session.execute(update(Job).where(_owned(job.id, job.worker_id or "", job.attempt)).values(**values))
    session.commit()
    return outcome.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def expire_lost(session: Session, now: datetime | None = None) -> list[str]:
    """Fail running jobs whose worker stopped renewing the lease (killed, machine lost)."""
    now = now or utcnow()
    lost = session.exec(
        select(Job.id).where(
            Job.status == JobStatus.running,
            or_(col(Job.lease_expires_at).is_(None), col(Job.lease_expires_at) < now),
        )
    ).all()
    failed = []
    for job_id in lost:
        outcome = session.execute(
            update(Job)
            .where(
                and_(
                    col(Job.id) == job_id,
                    col(Job.status) == JobStatus.running,
                    or_(col(Job.lease_expires_at).is_(None), col(Job.lease_expires_at) < now),
                )
            )
            .values(
                status=JobStatus.failed,
                phase=JobPhase.done,
                finished_at=now,
                updated_at=now,
                error_code="worker_lost",
                error_message=(
                    "the worker running this job stopped reporting (killed or its machine lost); submit the job again"
                ),
            )
        )
        if outcome.rowcount == 1:  # type: ignore[attr-defined]
            failed.append(job_id)
    session.commit()
    return failed
