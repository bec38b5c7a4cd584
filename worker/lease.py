"""The one supervision rule for training processes: a training process runs only while its worker can prove that
it holds the job's lease, and never outlives its worker.

Another worker may take a job over once its lease has run out in the database (`jobs.expire_lost`). A worker
whose main process stalls (stopped, swapped out, a frozen VM) or cannot reach the database stops renewing the
lease; its training process, untouched by that, would go on training and writing the run folder the new attempt
resumes from. So the worker keeps, in memory shared with its training process, the monotonic time until which
its lease is certainly still valid: the start of its last successful renewal plus the lease, minus a margin. A
watchdog thread in the training process ends the process when that time passes, before the database lets anyone
else claim the job. A worker that dies outright takes its training process with it (PR_SET_PDEATHSIG).

Worker side: `LeaseClock`. Training-process side: `guard()`, called first thing in the process.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

log = logging.getLogger("forge.worker.lease")

EXIT_LEASE_LOST = 75  # exit code of a training process that ended itself: its worker's lease ran out
EXIT_ORPHANED = 76  # exit code of a training process whose worker was gone before it could be tied to it

DISARMED = 0.0  # the deadline between jobs: an idle process writes nothing, so nothing to guard
WATCH_SECONDS = 0.05  # how often the watchdog looks at the deadline
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def margin(lease_seconds: float) -> float:
    """How long before the lease runs out in the database the training process ends itself: room for the
    watchdog's tick, the kill, and a busy machine."""
    return min(5.0, lease_seconds * 0.25)


class LeaseClock:
    """The worker's side: the deadline shared with its training processes (a double in shared memory; one aligned
    8-byte store, so a reader never sees half of one and needs no lock). A job on several ranks reads a copy in a
    file they map (worker/distributed.py): `mirror` it, and each renewal moves it too, until `disarm`."""

    def __init__(self, context: Any, lease_seconds: float) -> None:
        self.shared = context.RawValue("d", DISARMED)
        self.lease_seconds = lease_seconds
        self._mirrors: tuple[Any, ...] = ()

    def mirror(self, deadline: Any) -> None:
        """Keep `deadline` (a `.value` double) equal to this clock's until `disarm`; it starts at the current one."""
        self._mirrors = (*self._mirrors, deadline)  # replaced whole: the heartbeat thread reads it meanwhile
        deadline.value = self.shared.value

    def renewed(self, started_at: float) -> None:
        """The lease was renewed (or claimed) by a write that started at monotonic time `started_at`: the database
        counts the lease from a moment after it."""
        self._set(started_at + self.lease_seconds - margin(self.lease_seconds))

    def disarm(self) -> None:
        """The job is over: the process may idle for the next one without a lease; mirrors are let go."""
        self._set(DISARMED)
        self._mirrors = ()

    def _set(self, deadline: float) -> None:
        self.shared.value = deadline
        for copy in self._mirrors:
            copy.value = deadline

    def remaining(self) -> float | None:
        deadline = float(self.shared.value)
        return None if deadline == DISARMED else deadline - time.monotonic()


def guard(deadline: Any | None, parent_pid: int | None = None) -> None:
    """Tie this training process to its worker (or to `parent_pid`, the torchrun agent that started this rank):
    die with it, and end when the lease deadline passes."""
    parent = multiprocessing.parent_process()
    die_with_parent(parent_pid or (parent.pid if parent is not None else None))
    if deadline is None:  # run without a worker's lease (a test calling child_main directly)
        return
    threading.Thread(target=_watch, args=(deadline,), name="lease-watchdog", daemon=True).start()


def die_with_parent(parent_pid: int | None) -> None:
    """Be killed when the process that started this one dies; exit at once if `parent_pid` is already gone."""
    if sys.platform.startswith("linux"):
        # SIGKILL as soon as the worker dies. The kernel sends it when the thread that started this process
        # exits: the worker starts its training processes from its main thread, so that is the worker's death.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("could not ask for a parent-death signal (errno %d)", ctypes.get_errno())
    # The worker may have died before the request above: this process was then already handed to another parent.
    if parent_pid is not None and os.getppid() != parent_pid:
        os.write(2, b"forge: the worker died before its training process started; exiting\n")
        os._exit(EXIT_ORPHANED)


def _watch(deadline: Any) -> None:
    while True:
        until = float(deadline.value)
        if until != DISARMED and time.monotonic() >= until:
            # No logging call: the main thread may hold the logging lock, and the run folder is no longer ours.
            os.write(
                2,
                b"forge: the worker could not renew this job's lease in time (it stalled, or the database was out "
                b"of reach); ending the training process before another worker takes the job over\n",
            )
            os._exit(EXIT_LEASE_LOST)
        time.sleep(WATCH_SECONDS)
