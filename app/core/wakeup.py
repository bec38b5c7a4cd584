"""How an idle worker waits for work: on Postgres, LISTEN on the channel app.jobs NOTIFYs when a job is queued or
a cancel is asked for, with the poll interval as the timeout; on SQLite (one machine, no notifications), a sleep
of the poll interval."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from sqlalchemy.engine import make_url

log = logging.getLogger("forge.worker")

# The channel app.jobs NOTIFYs on; the payload is "<event>:<job id>".
WAKEUP_CHANNEL = "forge_jobs"
WakeupEvent = Literal["queued", "cancel"]  # a job was queued (or re-queued); a cancel was asked for


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL (postgresql+psycopg://...) as libpq takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Wakeup:
    """wait(timeout) returns early when a notification arrives; `cancels` collects the job ids of cancel requests
    seen while waiting or peeked at during a job (the supervision reacts at once instead of at its heartbeat)."""

    def __init__(self, url: str) -> None:
        self._url = libpq_url(url) if make_url(url).get_backend_name() == "postgresql" else None
        self._conn: Any = None
        self.cancels: set[str] = set()
        self._listening()  # before the first claim: a job queued in between must not wait for the poll

    def _listening(self) -> Any:
        if self._url is None:
            return None
        if self._conn is None or self._conn.closed:
            import psycopg

            try:
                self._conn = psycopg.connect(self._url, autocommit=True)
                self._conn.execute(f"LISTEN {WAKEUP_CHANNEL}")
            except psycopg.Error as exc:  # the database is away: poll until it is back
                log.warning("cannot LISTEN for new jobs (%s); polling instead", exc)
                self._conn = None
        return self._conn

    def _take(self, timeout: float, stop_after: int | None) -> bool:
        conn = self._listening()
        if conn is None:
            return False
        woken = False
        try:
            for note in conn.notifies(timeout=timeout, stop_after=stop_after):
                event, _, job_id = note.payload.partition(":")
                if event == "cancel":
                    self.cancels.add(job_id)
                woken = True
        except Exception as exc:  # a dropped connection: reconnect at the next wait
            log.warning("lost the LISTEN connection (%s); reconnecting", exc)
            self.close()
        return woken

    def wait(self, timeout: float) -> bool:
        """Sleep until a job may be waiting: a notification, or `timeout` seconds. Returns whether woken early."""
        if self._url is None:
            time.sleep(timeout)
            return False
        started = time.monotonic()
        woken = self._take(timeout, stop_after=1)
        if not woken and self._conn is None:  # could not listen: keep the poll interval anyway
            time.sleep(max(0.0, timeout - (time.monotonic() - started)))
        return woken

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel for this job was notified since the last look (never blocks)."""
        if self._url is not None:
            self._take(0.0, stop_after=None)
        if job_id in self.cancels:
            self.cancels.discard(job_id)
            return True
        return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
