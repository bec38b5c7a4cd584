"""The API's in-memory answers to GET /api/training and GET /jobs/{id}, refreshed when the database changes."""

from __future__ import annotations

import sqlite3

from sqlalchemy.engine import make_url

from app import jobs
from app.api.schemas import JobRead
from app.core.db import Database
from app.status import of_job


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
