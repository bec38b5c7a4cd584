"""The worker process: claim a job, run it in a child process, mirror its progress to the database and the
status file, pass on cancel requests, and never leave a job `running` once it has stopped working on it.

The database may refuse writes for a while (locked by a backup or a long query, out of reach, its disk full):
the worker then keeps the job training, keeps its progress in memory and retries with backoff; the lease rules
(worker/lease.py) decide when the training process must stop because the lease can no longer be proved. The lease
is renewed by a thread of its own (worker/heartbeat.py), so nothing this loop waits on can make a renewal late.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import Session

from app import jobs, retries, workers
from app import status as training_status
from app.core.config import Settings
from app.core.db import Database
from app.core.wakeup import Wakeup
from app.models import Job, JobPhase, JobStatus, utcnow
from app.run_folder import RunFolder, checkpoint_finder
from app.training_config import optimizer_names
from worker import faults, supervision
from worker.events import JobEvents
from worker.heartbeat import Heartbeat
from worker.lease import EXIT_LEASE_LOST, LeaseClock
from worker.protocol import (
    BackendChosen,
    CheckpointSaved,
    Failed,
    Interrupted,
    JobSpec,
    PartialResult,
    PhaseStarted,
    Progress,
    StopMode,
    Stopped,
    Succeeded,
)
from worker.supervision import Backoff, DatabaseDown, Ending
from worker.supervision import TrainingProcess as _Child
from worker.warm_process import WarmProcess

log = logging.getLogger("forge.worker")

PROGRESS_FLUSH_SECONDS = 0.5  # progress reaches the database at most twice a second
_T = TypeVar("_T")


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        self.settings = settings
        workers.check_writable(settings.runs_dir)
        self.db = Database(settings)
        self.worker_id = worker_id or settings.worker_id or workers.default_id()
        self.gpus = workers.gpus_for(settings.worker_gpus)
        self.wakeup = Wakeup(self.settings.sqlalchemy_url)
        self.stopping = False
        self.context = mp.get_context("spawn")  # a fresh interpreter: Unsloth must load before transformers
        # Until when the training process may run the current job: one clock, shared with each training process.
        self.lease = LeaseClock(self.context, settings.lease_seconds)
        self.processes = WarmProcess(self.context, self.lease, settings, self.gpus)
        self.backoff = Backoff(settings.lease_seconds)

    # -- lifecycle ------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("received %s; stopping after the current step", signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        # A job's config checks its optimizer against transformers' list: imported now, not while a lease is held.
        optimizer_names()
        log.info("worker %s (GPUs %s) watching %s", self.worker_id, self.gpus or "none", self.db.engine.url)
        heartbeat = workers.Heartbeat(self.db, self.worker_id, self.gpus, self.settings.heartbeat_seconds)
        try:
            return self._run(max_jobs, exit_when_idle)
        finally:
            heartbeat.stop()
            self.wakeup.close()
            self.db.dispose()

    def _run(self, max_jobs: int | None, exit_when_idle: bool) -> int:
        done = 0
        if self.processes.preload is not None:
            self.processes.idle()  # the model loads while the first job is claimed
        else:
            self.processes.start_ahead()  # the imports load while the first job is claimed
        while not self.stopping and (max_jobs is None or done < max_jobs):
            try:
                claimed = self._db("looking for a job", self._claim)
            except DatabaseDown:
                self.processes.idle()
                time.sleep(self.backoff.delay)
                continue
            if claimed is None:
                if exit_when_idle:
                    break
                self.processes.idle()
                self.wakeup.wait(self.settings.worker_poll_seconds)  # a NOTIFY on Postgres ends it early
                continue
            self.run_job(*claimed)
            done += 1
        self.processes.retire()
        return done

    def _claim(self, session: Session) -> tuple[Job, float] | None:
        """The job claimed, and a monotonic time before its lease began (settling lost jobs takes a while)."""
        for job_id, status in jobs.expire_lost(session, checkpoint_of=self.checkpoint_of):
            log.warning("job %s lost its worker; now %s", job_id, status.value)
        claimed_at = time.monotonic()
        # A job asking for more GPUs than this worker has waits for a worker that has them.
        job = jobs.claim_next(session, self.worker_id, self.settings.lease_seconds, workers.capacity(self.gpus))
        return None if job is None else (job, claimed_at)

    def checkpoint_of(self, job: Job) -> str | None:
        return checkpoint_finder(self.settings.runs_dir)(job)

    def _db(self, what: str, action: Callable[[Session], _T]) -> _T:
        return supervision.once(self.db, self.backoff, what, action)

    def _settle(self, what: str, action: Callable[[Session], _T]) -> _T:
        return supervision.settle(self.db, self.backoff, what, action)

    # -- one job --------------------------------------------------------------------------------------
    def run_job(self, job: Job, claimed_at: float | None = None) -> None:
        """Run a claimed job; its lease is renewed from the claim (at monotonic `claimed_at`) to its end."""
        self.lease.renewed(claimed_at if claimed_at is not None else time.monotonic())
        heartbeat = Heartbeat(self.db, job, self.lease, self.settings.heartbeat_seconds)
        try:
            child = self._start(job, heartbeat)
            ending = self._supervise(job, child, heartbeat) if child is not None else None
        finally:
            heartbeat.stop()
            self.lease.disarm()  # the training process has stopped working on this job
        if child is None:
            return
        clean = ending is not None and child.process.is_alive() and ending.clean
        if ending is not None:
            # Recorded before waiting for the process to exit: no lease is renewed while it tears down
            # (seconds on a busy machine), and a lease that runs out meanwhile would re-queue a finished job.
            self._finish(job, ending, None)
        self.processes.after_job(child, clean, self.stopping)  # a retired process's exit code is collected
        if ending is None:
            self._finish(job, ending, child.process.exitcode)

    def _start(self, job: Job, heartbeat: Heartbeat) -> _Child | None:
        """The job's run folder made and its training process given the job; None when the job ended before."""
        folder = RunFolder.of(self.settings.runs_dir, job)
        run_dir = folder.root
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a full disk, or no permission: this job fails, the worker goes on
            code, message = faults.disk_full(exc, run_dir) or (
                "run_dir_unwritable",
                f"could not create the job's run folder {run_dir}: {exc}; check FORGE_PROJECT_DIR's permissions",
            )
            self._finish(job, Ending(Failed(code=code, message=message)), None)
            return None
        if retries.clear_failed_attempt(job, folder):
            left = "measured batch size" + ("" if job.resume_from else " and checkpoints")
            log.info("job %s: cleared the failed attempt's %s before retrying", job.id, left)
        resuming = f", resuming from {job.resume_from}" if job.resume_from else ""
        log.info("job %s: claimed (attempt %d)%s", job.id, job.attempt, resuming)
        self._write_status()
        spec = JobSpec(
            job_id=job.id,
            config=job.config,
            run_dir=str(run_dir),
            project_dir=str(self.settings.resolved_project_dir),
            cache_dir=str(self.settings.cache_dir),
            resume_from=job.resume_from,
            kind=job.kind.value,
            source_run_dir=str(self.settings.runs_dir / job.source_job_id) if job.source_job_id else None,
            model_dirs=[str(d) for d in self.settings.model_dirs],
            accepted_job_id=job.accepted_job_id,
            claimed_at=time.time(),
        )
        child = self.processes.for_job(job, spec)
        if heartbeat.lost:
            log.warning("job %s is no longer ours before it started; leaving it", job.id)
            return None
        child.stop_flag.value = StopMode.RUN
        child.conn.send(spec)
        return child

    def _supervise(self, job: Job, training: _Child, heartbeat: Heartbeat) -> Ending | None:
        child, conn, stop_flag = training.process, training.conn, training.stop_flag
        pending: dict[str, Any] = {}
        recorder = JobEvents(job.id, job.training_config.training.output_dir)  # written with the progress
        last_flush = 0.0
        stop_asked_at: float | None = None
        reason = ""
        while True:
            if conn.poll(0.2):
                try:
                    message = conn.recv()
                except EOFError:
                    break
                if found := recorder.observe(message):
                    pending["new_events"] = [*pending.get("new_events", ()), *found]
                match message:
                    case Succeeded() | Failed() | Stopped() | Interrupted():
                        self._flush(job, pending, wait=True)
                        return Ending(message, reason)
                    case Progress():
                        pending.update(message.changes())
                    case PhaseStarted(phase=phase):
                        # A new phase starts without the previous one's progress line.
                        pending.update(phase=JobPhase(phase), phase_progress=None, phase_detail=None)
                        self._flush(job, pending)
                        last_flush = time.monotonic()
                    case BackendChosen(backend=backend):
                        pending["backend"] = backend
                    case CheckpointSaved():
                        pending["checkpoint_at"] = utcnow()
                    case PartialResult(result=result):  # what the job knows so far: baseline metrics, ...
                        pending["result"] = result
            elif not child.is_alive():
                break
            now = time.monotonic()
            if pending and now - last_flush >= PROGRESS_FLUSH_SECONDS:
                self._flush(job, pending)
                last_flush = now
            if heartbeat.lost and not reason:
                log.warning("job %s is no longer ours; stopping it", job.id)
                reason = "lost"
            if (heartbeat.cancel_requested or self.wakeup.cancel_requested(job.id)) and not reason:
                reason = "cancel"
            if self.stopping and not reason:
                reason = "shutdown"
            if reason and stop_asked_at is None:
                log.info("job %s: asking the trainer to stop (%s)", job.id, reason)
                stop_flag.value = StopMode.SHUTDOWN if reason == "shutdown" else StopMode.CANCEL
                stop_asked_at = now
            if stop_asked_at is not None and now - stop_asked_at > self.settings.cancel_grace_seconds:
                log.warning("job %s did not stop within %.0fs; killing it", job.id, self.settings.cancel_grace_seconds)
                child.kill()
                return Ending(Stopped(), reason, killed=True)
        self._flush(job, pending, wait=True)
        return Ending(Stopped(), reason) if reason else None

    def _flush(self, job: Job, pending: dict[str, Any], *, wait: bool = False) -> None:
        """Write the progress gathered since the last flush. A database that refuses it keeps it pending for the
        next flush, unless `wait` (the job's last progress, before its end is recorded)."""
        if not pending:
            return
        fields = dict(pending)
        if wait:
            self._settle("recording progress", lambda s: jobs.record_progress(s, job, **fields))
        else:
            if not self.backoff.ready(time.monotonic()):
                return
            try:
                self._db("recording progress", lambda s: jobs.record_progress(s, job, **fields))
            except DatabaseDown:
                return
        pending.clear()
        self._write_status()

    def _finish(self, job: Job, ending: Ending | None, exitcode: int | None) -> None:
        message = ending.message if ending else None

        def record(session: Session) -> JobStatus:
            if ending is None and exitcode == EXIT_LEASE_LOST:
                # The training process ended itself: this worker could not renew the lease in time.
                log.warning("job %s: the lease could not be renewed in time; the training process ended", job.id)
                jobs.give_up(session, job, self.checkpoint_of(job) or job.resume_from)
            elif ending is None:
                jobs.finish(
                    session,
                    job,
                    JobStatus.failed,
                    error_code="worker_crashed",
                    error_message=(
                        f"the training process died without reporting (exit code {exitcode}); "
                        "see logs/training.log in the job's artifacts. A kill by the system often means "
                        "it ran out of memory: lower per_device_train_batch_size or max_seq_length"
                    ),
                )
            elif isinstance(message, Succeeded):
                jobs.finish(session, job, JobStatus.succeeded, result=message.result)
            elif isinstance(message, Failed):
                if not self._retry(session, job, message):
                    jobs.finish(session, job, JobStatus.failed, error_code=message.code, error_message=message.message)
            elif isinstance(message, Interrupted):
                # A graceful shutdown: back to the queue, to resume from the checkpoint just saved (a job whose
                # cancel was asked for meanwhile ends cancelled instead).
                jobs.requeue(session, job, message.checkpoint)
            elif ending.reason == "cancel":
                jobs.finish(session, job, JobStatus.cancelled)
            elif ending.reason == "shutdown":
                # Killed after the grace period, before it could save: back to the queue from its last checkpoint.
                jobs.requeue(session, job, self.checkpoint_of(job) or job.resume_from)
            return jobs.get(session, job.id).status

        final = self._settle("recording the job's end", record)
        log.info("job %s: %s", job.id, final.value)
        self._write_status()

    def _retry(self, session: Session, job: Job, failed: Failed) -> bool:
        """Back to the queue once for a failure training.auto_retry heals (app.retries); False: it stands."""
        now = jobs.get(session, job.id)  # its step, phase and batch as the failed attempt left them
        planned = retries.plan(now, failed.code, failed.message, self.checkpoint_of(job) or job.resume_from)
        if planned is None:
            return False
        retry, config = planned
        log.warning("job %s: %s", job.id, retries.describe(retry))
        # The failed attempt's files are cleared by the retried attempt itself, once it holds the job (_start):
        # cleared here, before the requeue lands, they could be another worker's by then.
        return jobs.retry(session, job, retry, config) is not None

    def _write_status(self) -> None:
        path: Path = self.settings.status_file
        try:
            self._db("writing the status file", lambda s: training_status.refresh_file(s, path))
        except DatabaseDown:
            pass  # written again at the next change
        except OSError as exc:  # a full disk: the database stays the truth, the file catches up later
            log.warning("could not write the status file %s: %s", path, exc)
