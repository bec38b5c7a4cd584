"""The API's in-memory answers to GET /api/training and GET /jobs/{id}, refreshed when the database changes."""

from __future__ import annotations

import logging
import sqlite3
import threading

from sqlalchemy.engine import make_url

from app import jobs
from app.api.schemas import JobRead
from app.core.db import Database
from app.core.wakeup import libpq_url
from app.status import of_job

log = logging.getLogger("forge.api")

# Notified by a trigger on every statement that changes the job table (migration 0004).
CHANGED_CHANNEL = "forge_job_changed"


class _PostgresChanges:
    """Postgres' twin of `PRAGMA data_version`: a counter bumped by a thread on each NOTIFY the job table's trigger
    sends at commit. None while not listening (then nothing is cached); a new connection bumps it, since
    notifications sent while it was away are lost."""

    def __init__(self, url: str) -> None:
        self._url = libpq_url(url)
        self.version: int | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-cache-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        counter = 0
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANGED_CHANNEL}")
                    counter += 1
                    self.version = counter
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            counter += 1
                            self.version = counter
            except psycopg.Error as exc:
                self.version = None
                log.warning("status cache: lost the LISTEN connection (%s); not caching until it is back", exc)
                self._stopped.wait(1.0)
        self.version = None

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


class StatusCache:
    """The answers of GET /api/training and GET /jobs/{id}, kept in memory until the database changes.

    The Forge UI polls; hundreds of pollers would otherwise each cost a query and a serialisation. SQLite's
    `PRAGMA data_version` changes whenever another connection commits (a worker's progress, a heartbeat, the
    API's own writes through its pool), so one pragma on a read-only connection kept for it says whether the
    cached bytes are still true. The version is read before the query: a commit racing the query can only make
    the next request refresh again, never serve an older state. On Postgres a trigger NOTIFYs at each commit
    that changes a job and a listening thread counts them (_PostgresChanges); a commit whose notification is
    still on its way was either seen by the query or makes the next request refresh. Other databases are not
    cached.
    """

    MAX_JOBS = 1024

    def __init__(self, db: Database) -> None:
        self._db = db
        url = make_url(db.url)
        self._probe: sqlite3.Connection | None = None
        self._changes: _PostgresChanges | None = None
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            self._probe = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True, check_same_thread=False)
        elif url.get_backend_name() == "postgresql":
            self._changes = _PostgresChanges(db.url)
        self._version: int | None = None
        self._status: bytes | None = None
        self._jobs: dict[str, bytes] = {}

    def _check(self) -> None:
        version: int | None = None
        if self._probe is not None:
            version = self._probe.execute("PRAGMA data_version").fetchone()[0]
        elif self._changes is not None:
            version = self._changes.version
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
        if self._changes is not None:
            self._changes.close()
