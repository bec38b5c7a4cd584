"""Job state changes: guarded, exclusive, terminal states final, lost workers noticed; on SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from app import jobs
from app.core.config import Settings
from app.core.db import Database
from app.models import JobKind, JobPhase, JobStatus, utcnow
from app.training_config import TrainingConfig


def test_claim_runs_oldest_first_and_only_once(db_settings: Settings) -> None:
    db = Database(db_settings)
    with db.session() as s:
        first, _ = jobs.create(s, TrainingConfig())
        second, _ = jobs.create(s, TrainingConfig())
        a = jobs.claim_next(s, "worker-a", 60)
        b = jobs.claim_next(s, "worker-b", 60)
        assert jobs.claim_next(s, "worker-c", 60) is None
    assert a is not None and b is not None
    assert (a.id, a.worker_id, a.attempt, a.status) == (first.id, "worker-a", 1, JobStatus.running)
    assert (b.id, b.worker_id) == (second.id, "worker-b")


def test_only_the_owner_writes_and_terminal_states_are_final(db_settings: Settings) -> None:
    db = Database(db_settings)
    with db.session() as s:
        jobs.create(s, TrainingConfig())
        job = jobs.claim_next(s, "worker-a", 60)
        assert job is not None
        impostor = job.model_copy(update={"worker_id": "worker-b"})
        assert not jobs.record_progress(s, impostor, step=3)
        assert jobs.record_progress(s, job, step=2, phase=JobPhase.training)
        assert jobs.finish(s, job, JobStatus.succeeded, result={"steps": 2})
        # Nothing moves a finished job again: not a late progress write, not another finish.
        assert not jobs.record_progress(s, job, step=9)
        assert not jobs.finish(s, job, JobStatus.failed, error_code="x", error_message="y")
        assert jobs.renew_lease(s, job, 60) is None
        final = jobs.get(s, job.id)
    assert (final.status, final.step, final.phase, final.error_code) == (
        JobStatus.succeeded,
        2,
        JobPhase.done,
        None,
    )


def test_expired_lease_fails_the_job_as_worker_lost(db_settings: Settings) -> None:
    db = Database(db_settings)
    with db.session() as s:
        jobs.create(s, TrainingConfig())
        job = jobs.claim_next(s, "worker-a", 60)
        assert job is not None
        assert jobs.expire_lost(s) == []
        assert jobs.expire_lost(s, now=utcnow() + timedelta(seconds=61)) == [(job.id, JobStatus.failed)]
        lost = jobs.get(s, job.id)
        assert (lost.status, lost.error_code) == (JobStatus.failed, "worker_lost")
        assert not jobs.record_progress(s, job, step=1)  # the old worker's writes no longer land


def test_an_export_job_whose_worker_was_lost_starts_over(db_settings: Settings) -> None:
    """Export jobs have no checkpoints and need none: a lost one goes back to the queue, or is resumed by hand."""
    db = Database(db_settings)
    with db.session() as s:
        export, _ = jobs.create(s, TrainingConfig(), kind=JobKind.export, source_job_id="src")
        job = jobs.claim_next(s, "worker-a", 60)
        assert job is not None and job.id == export.id
        later = utcnow() + timedelta(seconds=61)
        assert jobs.expire_lost(s, now=later, checkpoint_of=lambda _: None) == [(job.id, JobStatus.queued)]
        again = jobs.claim_next(s, "worker-b", 60)
        assert again is not None and (again.id, again.attempt, again.resume_from) == (job.id, 2, None)

        stubborn = TrainingConfig.model_validate({"training": {"resume_on_worker_lost": False}})
        export, _ = jobs.create(s, stubborn, kind=JobKind.export, source_job_id="src")
        job = jobs.claim_next(s, "worker-a", 60)
        assert job is not None and job.id == export.id
        # Past this claim's lease too (the first `later` may not be, on a machine slow enough).
        lost = jobs.expire_lost(s, now=utcnow() + timedelta(seconds=61), checkpoint_of=lambda _: None)
        assert (job.id, JobStatus.failed) in lost
        resumed = jobs.resume(s, job.id, lambda _: None)
        assert (resumed.status, resumed.resume_from, resumed.error_code) == (JobStatus.queued, None, None)


def test_a_requested_cancel_ends_cancelled_on_every_path_back_to_the_queue(db_settings: Settings) -> None:
    """A shutdown, a crash or a lost lease never re-queue a job whose cancel was asked for."""
    db = Database(db_settings)
    later = utcnow() + timedelta(seconds=61)
    with db.session() as s:
        for _ in range(4):
            jobs.create(s, TrainingConfig())
        shutdown, crashed, lost, stalled = (jobs.claim_next(s, f"worker-{i}", 60) for i in range(4))
        assert shutdown and crashed and lost and stalled
        for job in (shutdown, crashed, lost, stalled):
            assert jobs.request_cancel(s, job.id).status == JobStatus.cancelling

        assert jobs.requeue(s, shutdown, "outputs/checkpoint-2") == JobStatus.cancelled  # SIGTERM to the worker
        assert jobs.finish(s, crashed, JobStatus.failed, error_code="worker_crashed", error_message="died")
        assert jobs.give_up(s, stalled, "outputs/checkpoint-2") == JobStatus.cancelled  # its lease not renewable
        assert jobs.expire_lost(s, now=later, checkpoint_of=lambda _: "outputs/checkpoint-2") == [
            (lost.id, JobStatus.cancelled)
        ]
        for job in (shutdown, crashed, lost, stalled):
            final = jobs.get(s, job.id)
            assert (final.status, final.error_code, final.phase) == (JobStatus.cancelled, None, JobPhase.done)
            assert final.finished_at is not None and final.lease_expires_at is None
        assert jobs.claim_next(s, "worker-5", 60) is None


def test_without_a_cancel_the_same_paths_requeue_or_fail(db_settings: Settings) -> None:
    db = Database(db_settings)
    with db.session() as s:
        for _ in range(2):
            jobs.create(s, TrainingConfig())
        shutdown, stalled = (jobs.claim_next(s, f"worker-{i}", 60) for i in range(2))
        assert shutdown and stalled
        assert jobs.requeue(s, shutdown, "outputs/checkpoint-2") == JobStatus.queued
        assert jobs.give_up(s, stalled, None) == JobStatus.failed  # no checkpoint to resume from
        assert jobs.get(s, stalled.id).error_code == "worker_lost"
        assert jobs.give_up(s, stalled, None) is None  # no longer ours: nothing changes


def test_a_job_waits_for_a_worker_with_the_gpus_it_asks_for(db_settings: Settings) -> None:
    """training.num_gpus: a worker claims only the jobs its GPUs can take; "all" and old jobs fit every worker
    (on SQLite's guarded claim and on Postgres's SKIP LOCKED one)."""

    def asking(gpus: int | str | None) -> TrainingConfig:
        config = TrainingConfig.model_validate({"training": {"gradient_accumulation_steps": 4}})
        if gpus is not None:
            config.training.num_gpus = gpus  # type: ignore[assignment]
        return config

    db = Database(db_settings)
    with db.session() as s:
        four, _ = jobs.create(s, asking(4))
        two, _ = jobs.create(s, asking(2))
        every, _ = jobs.create(s, asking("all"))
        old, _ = jobs.create(s, asking(None))
        training = {k: v for k, v in old.config["training"].items() if k != "num_gpus"}
        old.config = {**old.config, "training": training}  # a job queued before num_gpus existed
        s.add(old)
        s.commit()
        taken = [jobs.claim_next(s, "one-gpu", 60) for _ in range(3)]
        assert [job.id if job else None for job in taken] == [every.id, old.id, None]
        assert (claimed := jobs.claim_next(s, "two-gpus", 60, gpus=2)) is not None and claimed.id == two.id
        assert jobs.claim_next(s, "two-gpus", 60, gpus=2) is None
        assert (claimed := jobs.claim_next(s, "eight-gpus", 60, gpus=8)) is not None and claimed.id == four.id


def test_postgres_claim_skips_a_row_another_claim_holds(postgres_url: str, settings: Settings) -> None:
    """The claim does not wait behind a competing claim's row lock: it takes the next job (SKIP LOCKED)."""
    db = Database(settings.model_copy(update={"database_url": postgres_url}))
    with db.session() as s:
        first, _ = jobs.create(s, TrainingConfig())
        second, _ = jobs.create(s, TrainingConfig())
    with db.engine.connect() as holder:  # a claim in flight: the oldest row locked, its transaction open
        holder.execute(text("SELECT id FROM job WHERE id = :id FOR UPDATE"), {"id": first.id})
        with db.session() as s:
            claimed = jobs.claim_next(s, "worker-b", 60)
        holder.rollback()
    assert claimed is not None and claimed.id == second.id
    with db.session() as s:
        again = jobs.claim_next(s, "worker-c", 60)
    assert again is not None and again.id == first.id
