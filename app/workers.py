"""The worker registry: each worker process registers when it starts, beats while it lives (a thread of its own,
so a long step never makes it look dead) and leaves when it stops cleanly. The API lists it."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from app.core.db import Database
from app.models import ACTIVE_STATUSES, Job, WorkerRecord, utcnow

log = logging.getLogger("forge.worker")

# A worker whose heartbeat is older than this is dropped from the registry when another one registers.
FORGOTTEN_AFTER = timedelta(days=1)


def default_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def visible_gpus() -> list[int]:
    """The GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES when set, else the NVIDIA
    device files (/dev/nvidia0, ...); none on a CPU-only machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(part) for part in visible.split(",") if part.strip().isdigit()]
    return sorted(int(m.group(1)) for p in Path("/dev").glob("nvidia*") if (m := re.fullmatch(r"nvidia(\d+)", p.name)))


def gpus_for(configured: Sequence[int] | None) -> list[int]:
    """The GPUs a worker trains on: FORGE_WORKER_GPUS when set (the training processes it spawns later then see
    those only), else every GPU it sees."""
    if configured is None:
        return visible_gpus()
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in configured)
    return list(configured)


def capacity(gpus: Sequence[int]) -> int:
    """How many ranks a job may have on a worker with `gpus`: one per GPU; on a CPU-only worker FORGE_WORKER_GPUS
    may still name slots, each a CPU rank (gloo), and without it the worker runs one-process jobs only."""
    return max(1, len(gpus))


def most_gpus(session: Session) -> int | None:
    """The most ranks any registered worker can give one job (`capacity`); None while no worker is registered."""
    records = session.exec(select(WorkerRecord.gpus)).all()
    return max((capacity(gpus) for gpus in records), default=None)


def check_writable(runs_dir: Path) -> None:
    """Refuse to start a worker that cannot write run folders: every host's workers must share this folder."""
    probe = runs_dir / f".write-check-{socket.gethostname()}-{os.getpid()}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(
            f"the worker cannot write run folders in {runs_dir} ({exc.strerror or exc}); every worker needs the "
            "project directory (FORGE_PROJECT_DIR) writable, on a filesystem all the workers' hosts share"
        ) from exc


def register(session: Session, worker_id: str, gpus: Sequence[int]) -> None:
    now = utcnow()
    session.execute(delete(WorkerRecord).where(col(WorkerRecord.heartbeat_at) < now - FORGOTTEN_AFTER))
    record = session.get(WorkerRecord, worker_id) or WorkerRecord(id=worker_id, host="", pid=0)
    record.host, record.pid, record.gpus = socket.gethostname(), os.getpid(), list(gpus)
    record.started_at = record.heartbeat_at = now
    session.add(record)
    session.commit()


def beat(session: Session, worker_id: str) -> None:
    session.execute(update(WorkerRecord).where(col(WorkerRecord.id) == worker_id).values(heartbeat_at=utcnow()))
    session.commit()


def leave(session: Session, worker_id: str) -> None:
    session.execute(delete(WorkerRecord).where(col(WorkerRecord.id) == worker_id))
    session.commit()


def listing(session: Session) -> list[tuple[WorkerRecord, str | None]]:
    """Every registered worker, newest first, with the job it runs now (from the job table), if any."""
    records = session.exec(select(WorkerRecord).order_by(col(WorkerRecord.started_at).desc())).all()
    running = session.exec(select(Job.worker_id, Job.id).where(col(Job.status).in_(ACTIVE_STATUSES))).all()
    current = {worker_id: job_id for worker_id, job_id in running}
    return [(record, current.get(record.id)) for record in records]


class Heartbeat:
    """Registers the worker and renews its heartbeat every `seconds` from a thread, until `stop()`."""

    def __init__(self, db: Database, worker_id: str, gpus: Sequence[int], seconds: float) -> None:
        self.db, self.worker_id, self.seconds = db, worker_id, seconds
        with db.session() as session:
            register(session, worker_id, gpus)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.seconds):
            try:
                with self.db.session() as session:
                    beat(session, self.worker_id)
            except Exception:  # the database away for a moment: the next beat tries again
                log.exception("could not renew the worker heartbeat")

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        with self.db.session() as session:
            leave(session, self.worker_id)
