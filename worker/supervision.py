"""What the worker loop keeps about the training process it supervises: the process itself, how a job ended, and
when a database that refused a write may be tried again."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from app.core.db import Database, unavailable
from worker.child import child_main
from worker.lease import LeaseClock
from worker.protocol import Outcome, StopMode, Stopped, Succeeded

log = logging.getLogger("forge.worker")
_T = TypeVar("_T")

# Waits between tries of a database that refused a write: doubling from the first to the last, and never more
# than an eighth of the lease, so that a renewal is tried soon after the database answers again.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0


class DatabaseDown(Exception):
    """The database refused a write for now (locked, out of reach, its disk full): try again later."""


class Backoff:
    """When the database may be tried again: waits doubling while it refuses, reset by a write that lands."""

    def __init__(self, lease_seconds: float) -> None:
        self.longest = min(RETRY_MAX_SECONDS, lease_seconds / 8)
        self.delay = 0.0
        self.next_try = 0.0
        self.down_since: float | None = None

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def failed(self, now: float) -> float:
        self.delay = min(max(self.delay * 2, RETRY_FIRST_SECONDS), self.longest)
        self.next_try = now + self.delay
        if self.down_since is None:
            self.down_since = now
        return self.delay

    def succeeded(self, now: float) -> float | None:
        """Returns for how long the database was down, if it was."""
        down, self.down_since = self.down_since, None
        self.delay, self.next_try = 0.0, 0.0
        return None if down is None else now - down


@dataclass
class Ending:
    """How a job ended, as the worker saw it: the training process's last message (None: it sent none) and why
    the worker asked it to stop ("cancel", "shutdown", "lost"; "": it did not)."""

    message: Outcome | None
    reason: str = ""
    killed: bool = False  # the worker killed the process after the grace period

    @property
    def clean(self) -> bool:
        """The process finished the job as it should and may take another."""
        if self.killed:
            return False
        return isinstance(self.message, Succeeded) or (isinstance(self.message, Stopped) and self.reason == "cancel")


@dataclass
class TrainingProcess:
    """A training process (worker/child.py child_main) and the pipe and stop flag that reach it."""

    process: Any
    conn: Any
    stop_flag: Any
    backend: str
    reusable: bool = True  # may take the next job (torchrun's ranks run one job: worker/distributed.py)
    idle_since: float = 0.0

    def takes(self, backend: str) -> bool:
        """Whether this warm process may run the next one-process job on `backend` (as `imported_by` names it)."""
        return self.reusable and self.process.is_alive() and self.backend == backend

    @classmethod
    def spawn(cls, context: Any, lease: LeaseClock, backend: str) -> TrainingProcess:
        """A fresh training process (worker/child.py), waiting for its first job, on the worker's lease clock."""
        parent_conn, child_conn = context.Pipe()
        stop_flag = context.Value("i", StopMode.RUN)
        process = context.Process(target=child_main, args=(child_conn, stop_flag, lease.shared), daemon=True)
        process.start()
        child_conn.close()
        return cls(process, parent_conn, stop_flag, backend)


def once(db: Database, backoff: Backoff, what: str, action: Callable[[Session], _T]) -> _T:
    """`action` in a session of its own. A database that cannot take it now raises DatabaseDown (logged, the
    next try put off); any other error is a bug and propagates."""
    try:
        with db.session() as session:
            result = action(session)
    except (DBAPIError, sqlite3.DatabaseError) as exc:
        reason = unavailable(exc)
        if reason is None:
            raise
        delay = backoff.failed(time.monotonic())
        state = "full (its disk)" if reason == "full" else "locked by another process or out of reach"
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        log.warning("the database is %s while %s; retrying in %.1fs (%s)", state, what, delay, cause)
        raise DatabaseDown(what) from exc
    down = backoff.succeeded(time.monotonic())
    if down is not None:
        log.info("the database answers again after %.1fs", down)
    return result


def settle(db: Database, backoff: Backoff, what: str, action: Callable[[Session], _T]) -> _T:
    """`action` retried until the database takes it: a job's end must be recorded, or it would stay `running`
    (if the lease runs out meanwhile, the job is settled by whoever notices, and `action` changes nothing)."""
    while True:
        try:
            return once(db, backoff, what, action)
        except DatabaseDown:
            time.sleep(backoff.delay)
