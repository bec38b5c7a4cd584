"""The project's accepted model: promoting a succeeded training job, and which job is accepted now.

A project is the service's FORGE_PROJECT_DIR, with its one database: jobs carry no project of their own, so the
accepted model is one per database. Each promotion is a row (who, when, why); the newest row is the accepted
model, the older ones its history. A job is refused when any of its gates failed, whatever gates.required says:
gates.required only decides whether the job itself fails, and a model that failed a gate (no-regression
included) is not one to accept silently.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from app import jobs
from app.core.errors import Conflict, NotFound
from app.models import GateStatus, Job, JobKind, JobStatus, Promotion, evaluation_of


def promote(session: Session, job_id: str, *, by: str | None, note: str | None) -> Promotion:
    """Make a succeeded training job with no failed gate the accepted model (404 unknown job, 409 otherwise)."""
    job = jobs.get(session, job_id)
    if job.kind != JobKind.training:
        raise Conflict(f"job {job_id} is an export job; promote the training job it exports", code="not_a_training_job")
    gates, _ = evaluation_of(job)
    failed = [gate for gate in gates.gates if gate.status == GateStatus.failed] if gates else []
    if failed:
        names = ", ".join(gate.name.value for gate in failed)
        raise Conflict(
            f"job {job_id} failed the gate(s) {names}: " + "; ".join(f"{g.name.value}: {g.message}" for g in failed),
            code="gate_failed",
            details=[{"param": gate.name.value, "message": gate.message, "type": "gate_failed"} for gate in failed],
        )
    if job.status != JobStatus.succeeded:
        raise Conflict(
            f"job {job_id} is {job.status.value}; only a succeeded job can be promoted", code="not_succeeded"
        )
    promotion = Promotion(job_id=job.id, promoted_by=by, note=note)
    session.add(promotion)
    session.commit()
    session.refresh(promotion)
    return promotion


def accepted(session: Session) -> tuple[Promotion, Job]:
    """The accepted model and its job; 404 when no job was promoted yet."""
    promotion = session.exec(select(Promotion).order_by(col(Promotion.id).desc()).limit(1)).first()
    if promotion is None:
        raise NotFound(
            "no accepted model yet: promote a succeeded job with POST /api/training/jobs/{id}/promote",
            code="no_accepted_model",
        )
    return promotion, jobs.get(session, promotion.job_id)
