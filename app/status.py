"""The flat status object of the spec, shared by GET /api/training and .factory/training-status.json."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from sqlmodel import Session

from app import jobs
from app.models import ACTIVE_STATUSES, Job, TrainingStatus


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
        kind=job.kind,
        phase_progress=job.phase_progress,
        phase_detail=job.phase_detail,
    )


def write_file(path: Path, status: TrainingStatus) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(status.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".training-status.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refresh_file(session: Session, path: Path) -> TrainingStatus:
    """Write what GET /api/training shows now: called by whoever changed a job's state."""
    current = of_job(jobs.current(session))
    write_file(path, current)
    return current
