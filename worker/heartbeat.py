"""The lease's heartbeat: a thread of the worker that renews its job's lease on schedule, from the claim to the
job's end, whatever the worker's main thread is doing meanwhile (starting the training process, writing progress
or the status file to a busy disk, waiting out a locked database).

Each renewal that lands moves the training process's deadline (worker/lease.py); one the database refuses leaves
it where it was and is tried again with backoff. The thread is part of the worker process, so the lease rules
stand: a worker stopped (SIGSTOP) or killed renews nothing, and its training process ends itself in time.
"""

from __future__ import annotations

import logging
import threading
import time

from app import jobs
from app.core.db import Database
from app.models import Job
from worker.lease import LeaseClock
from worker.supervision import Backoff, DatabaseDown, once

log = logging.getLogger("forge.worker")


class Heartbeat:
    """Renews one job's lease every `interval` seconds in a thread of its own, until `stop()`."""

    def __init__(self, db: Database, job: Job, lease: LeaseClock, interval: float) -> None:
        self.db, self.job, self.lease, self.interval = db, job, lease, interval
        self.cancel_requested = False  # a renewal saw the job's cancel requested
        self.lost = False  # a renewal found the job no longer ours (settled, or taken over by another worker)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {job.id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Renew no more; returns once a renewal in flight has ended, so nothing moves the deadline after this."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        backoff = Backoff(self.lease.lease_seconds)  # its own: the main thread's writes keep theirs
        try:
            while not self._stopping.wait(backoff.delay or self.interval):
                if not self._renew(backoff):
                    return
        except Exception:  # a bug: the lease then runs out, and the training process ends itself
            log.exception("job %s: the lease heartbeat stopped", self.job.id)

    def _renew(self, backoff: Backoff) -> bool:
        """One renewal; False when the job is no longer ours (nothing left to renew)."""
        started = time.monotonic()  # the database counts the renewed lease from a moment after this
        try:
            cancel = once(
                self.db,
                backoff,
                "renewing the lease",
                lambda s: jobs.renew_lease(s, self.job, self.lease.lease_seconds),
            )
        except DatabaseDown:
            return True  # the deadline stays where it was; tried again after the backoff
        if cancel is None:
            self.lost = True
            return False
        self.lease.renewed(started)
        self.cancel_requested = self.cancel_requested or cancel
        return True
