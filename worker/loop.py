"""The worker process: claim a job, run it in a child process, mirror its progress to the database and the
status file, pass on cancel requests, and never leave a job `running` once it has stopped working on it."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from app import jobs, workers
from app import status as training_status
from app.core.config import Settings
from app.core.db import Database
from app.core.wakeup import Wakeup
from app.models import Job, JobPhase, JobStatus, utcnow
from app.run_folder import checkpoint_finder
from worker.runner import CANCEL, RUN, SHUTDOWN, JobSpec, child_main

log = logging.getLogger("forge.worker")

PROGRESS_FLUSH_SECONDS = 0.5  # progress reaches the database at most twice a second


@dataclass
class _Child:
    """A training process (worker/runner.py child_main) and the pipe and stop flag that reach it."""

    process: Any
    conn: Any
    stop_flag: Any
    backend: str
    idle_since: float = 0.0


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        self.settings = settings
        workers.check_writable(settings.runs_dir)
        self.db = Database(settings)
        self.worker_id = worker_id or settings.worker_id or workers.default_id()
        self.gpus = workers.visible_gpus() if settings.worker_gpus is None else settings.worker_gpus
        if settings.worker_gpus is not None:  # the training processes (spawned later) see these GPUs only
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in settings.worker_gpus)
        self.wakeup = Wakeup(self.settings.sqlalchemy_url)
        self.stopping = False
        self.context = mp.get_context("spawn")  # a fresh interpreter: Unsloth must load before transformers
        self.child: _Child | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("received %s; stopping after the current step", signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
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
        while not self.stopping and (max_jobs is None or done < max_jobs):
            with self.db.session() as session:
                for job_id, status in jobs.expire_lost(session, checkpoint_of=self.checkpoint_of):
                    log.warning("job %s lost its worker; now %s", job_id, status.value)
                job = jobs.claim_next(session, self.worker_id, self.settings.lease_seconds)
            if job is None:
                if exit_when_idle:
                    break
                self._retire_idle_child()
                self.wakeup.wait(self.settings.worker_poll_seconds)  # a NOTIFY on Postgres ends it early
                continue
            self.run_job(job)
            done += 1
        self._retire_child()
        return done

    def checkpoint_of(self, job: Job) -> str | None:
        return checkpoint_finder(self.settings.runs_dir)(job)

    # -- one job --------------------------------------------------------------------------------------
    def run_job(self, job: Job) -> None:
        run_dir = self.settings.runs_dir / job.id
        run_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "job %s: claimed (attempt %d)%s",
            job.id,
            job.attempt,
            f", resuming from {job.resume_from}" if job.resume_from else "",
        )
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
        )
        child = self._child_for(job.training_config.backend)
        child.stop_flag.value = RUN
        child.conn.send(spec)
        outcome = self._supervise(job, child.process, child.conn, child.stop_flag)
        clean = (
            outcome is not None
            and child.process.is_alive()
            and not outcome.get("killed")
            and (outcome["type"] == "succeeded" or (outcome["type"] == "stopped" and outcome.get("reason") == "cancel"))
        )
        if outcome is not None:
            # Recorded before waiting for the process to exit: no lease is renewed while it tears down
            # (seconds on a busy machine), and a lease that runs out meanwhile would re-queue a finished job.
            self._finish(job, outcome, None)
        if not clean or self.settings.worker_keep_warm_seconds <= 0 or self.stopping:
            self._retire_child()  # also collects the exit code of a child that died
        else:
            child.idle_since = time.monotonic()
        if outcome is None:
            self._finish(job, outcome, child.process.exitcode)

    # -- the training process, kept warm between jobs ------------------------------------------------------
    def _child_for(self, backend: str) -> _Child:
        """The warm training process when it fits this job (same backend setting), else a fresh one.

        A process that imported Unsloth has patched transformers for good, so jobs asking for another backend
        get a process of their own.
        """
        child = self.child
        if child is not None and child.process.is_alive() and child.backend == backend:
            log.info("reusing the warm training process (pid %s)", child.process.pid)
            return child
        self._retire_child()
        parent_conn, child_conn = self.context.Pipe()
        stop_flag = self.context.Value("i", RUN)
        process = self.context.Process(target=child_main, args=(child_conn, stop_flag), daemon=True)
        process.start()
        child_conn.close()
        self.child = _Child(process, parent_conn, stop_flag, backend)
        return self.child

    def _retire_child(self) -> None:
        child, self.child = self.child, None
        if child is None:
            return
        child.conn.close()  # the child's next read ends: it exits
        child.process.join(timeout=30)
        if child.process.is_alive():
            child.process.kill()
            child.process.join()

    def _retire_idle_child(self) -> None:
        child = self.child
        if child is not None and time.monotonic() - child.idle_since > self.settings.worker_keep_warm_seconds:
            log.info("the warm training process was idle for %.0fs; ending it", self.settings.worker_keep_warm_seconds)
            self._retire_child()

    def _supervise(self, job: Job, child: Any, conn: Any, stop_flag: Any) -> dict[str, Any] | None:
        pending: dict[str, Any] = {}
        last_flush = 0.0
        next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
        stop_asked_at: float | None = None
        reason = ""
        while True:
            if conn.poll(0.2):
                try:
                    message = conn.recv()
                except EOFError:
                    break
                kind = message.pop("type")
                if kind in ("succeeded", "failed", "stopped", "interrupted"):
                    self._flush(job, pending)
                    return {"type": kind, "reason": reason, **message}
                if kind == "progress":
                    pending.update({k: v for k, v in message.items() if v is not None})
                elif kind == "phase":
                    # A new phase starts without the previous one's progress line.
                    pending.update(phase=JobPhase(message["phase"]), phase_progress=None, phase_detail=None)
                    self._flush(job, pending)
                    last_flush = time.monotonic()
                elif kind == "backend":
                    pending["backend"] = message["backend"]
                elif kind == "checkpoint":
                    pending["checkpoint_at"] = utcnow()
                elif kind == "result":  # what the job knows so far: baseline metrics, evaluation progress
                    pending["result"] = message["result"]
            elif not child.is_alive():
                break
            now = time.monotonic()
            if pending and now - last_flush >= PROGRESS_FLUSH_SECONDS:
                self._flush(job, pending)
                last_flush = now
            if now >= next_heartbeat or self.wakeup.cancel_requested(job.id):
                next_heartbeat = now + self.settings.heartbeat_seconds
                with self.db.session() as session:
                    cancel = jobs.renew_lease(session, job, self.settings.lease_seconds)
                if cancel is None:
                    log.warning("job %s is no longer ours; stopping it", job.id)
                    reason = reason or "lost"
                elif cancel:
                    reason = reason or "cancel"
            if self.stopping and not reason:
                reason = "shutdown"
            if reason and stop_asked_at is None:
                log.info("job %s: asking the trainer to stop (%s)", job.id, reason)
                stop_flag.value = SHUTDOWN if reason == "shutdown" else CANCEL
                stop_asked_at = now
            if stop_asked_at is not None and now - stop_asked_at > self.settings.cancel_grace_seconds:
                log.warning("job %s did not stop within %.0fs; killing it", job.id, self.settings.cancel_grace_seconds)
                child.kill()
                return {"type": "stopped", "reason": reason, "killed": True}
        self._flush(job, pending)
        return None if not reason else {"type": "stopped", "reason": reason}

    def _flush(self, job: Job, pending: dict[str, Any]) -> None:
        if not pending:
            return
        with self.db.session() as session:
            jobs.record_progress(session, job, **pending)
        pending.clear()
        self._write_status()

    def _finish(self, job: Job, outcome: dict[str, Any] | None, exitcode: int | None) -> None:
        with self.db.session() as session:
            if outcome is None:
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
            elif outcome["type"] == "succeeded":
                jobs.finish(session, job, JobStatus.succeeded, result=outcome["result"])
            elif outcome["type"] == "failed":
                jobs.finish(
                    session,
                    job,
                    JobStatus.failed,
                    error_code=outcome["code"],
                    error_message=outcome["message"],
                )
            elif outcome["type"] == "interrupted":
                # A graceful shutdown: back to the queue, to resume from the checkpoint just saved.
                jobs.requeue(session, job, outcome["checkpoint"])
            elif outcome["reason"] == "cancel":
                jobs.finish(session, job, JobStatus.cancelled)
            elif outcome["reason"] == "shutdown":
                # Killed after the grace period, before it could save: back to the queue from its last checkpoint.
                jobs.requeue(session, job, self.checkpoint_of(job) or job.resume_from)
            final = jobs.get(session, job.id)
        log.info("job %s: %s", job.id, final.status.value)
        self._write_status()

    def _write_status(self) -> None:
        with self.db.session() as session:
            training_status.refresh_file(session, self.settings.status_file)
