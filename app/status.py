"""The flat status object of the spec, shared by GET /api/training and .factory/training-status.json."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlmodel import Session

from app import files, jobs
from app.core.db import Database
from app.models import ACTIVE_STATUSES, Job, JobRead, TrainingStatus, evaluation_of


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
    total_epochs = job.total_epochs if job.total_epochs is not None else job.config["training"]["num_train_epochs"]
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


class StatusCache:
    """The answers of GET /api/training and GET /jobs/{id}, kept in memory until the database changes.

    The Forge UI polls; hundreds of pollers would otherwise each cost a query and a serialisation. SQLite's
    `PRAGMA data_version` changes whenever another connection commits (a worker's progress, a heartbeat, the
    API's own writes through its pool), so one pragma on a read-only connection kept for it says whether the
    cached bytes are still true. The version is read before the query: a commit racing the query can only make
    the next request refresh again, never serve an older state. Databases other than a SQLite file are not cached.
    """

    MAX_JOBS = 1024

    def __init__(self, db: Database) -> None:
        self._db = db
        url = make_url(db.url)
        self._probe: sqlite3.Connection | None = None
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            self._probe = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True, check_same_thread=False)
        self._version: int | None = None
        self._status: bytes | None = None
        self._jobs: dict[str, bytes] = {}

    def _check(self) -> None:
        version = self._probe.execute("PRAGMA data_version").fetchone()[0] if self._probe else None
        if version is None or version != self._version:
            self._version, self._status = version, None
            self._jobs.clear()

    def status(self) -> bytes:
        self._check()
        if self._status is None:
            with self._db.session() as session:
                self._status = of_job(jobs.current(session)).model_dump_json().encode()
        return self._status

    def job(self, job_id: str) -> bytes:
        """JobRead of one job as JSON; NotFound as jobs.get raises it."""
        self._check()
        body = self._jobs.get(job_id)
        if body is None:
            with self._db.session() as session:
                body = JobRead.from_job(jobs.get(session, job_id)).model_dump_json().encode()
            if len(self._jobs) >= self.MAX_JOBS:
                self._jobs.clear()
            self._jobs[job_id] = body
        return body

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
