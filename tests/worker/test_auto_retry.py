"""training.auto_retry: a job that ran out of memory while training goes back to the queue once with half the
batch and twice the accumulation; the failure stands where there is nothing to heal. On SQLite and Postgres,
through the worker loop's real end-of-job path; the divergence retry runs end to end in
tests/e2e/test_cancel_and_failures.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app import events, jobs, retries
from app.api.schemas import JobRead
from app.core.config import Settings
from app.models import Job, JobPhase, JobStatus
from app.run_folder import RunFolder
from app.training_config import TrainingConfig
from worker.batch_size import BatchPlan
from worker.child import classify
from worker.loop import Worker
from worker.protocol import Failed
from worker.supervision import Ending


def real_out_of_memory() -> Failed:
    """The failure a training step reports when an allocation does not fit: a real one, on the CPU allocator."""
    with pytest.raises(RuntimeError) as raised:
        torch.empty(2**50, dtype=torch.float32)  # 4 PiB: no machine gives that
    return Failed(*classify(raised.value))


def fail_while_training(
    worker: Worker, job: Job, failed: Failed, batch: BatchPlan, step: int = 12, phase: JobPhase = JobPhase.training
) -> Job:
    """The job's progress as its attempt left it, then its failure through the worker loop's end-of-job path."""
    with worker.db.session() as s:
        assert jobs.record_progress(s, job, step=step, phase=phase, result={"batch_size": batch.as_dict()})
    worker._finish(job, Ending(failed), None)
    with worker.db.session() as s:
        return jobs.get(s, job.id)


def claim(worker: Worker) -> Job:
    with worker.db.session() as s:
        job = jobs.claim_next(s, worker.worker_id, 60)
    assert job is not None
    return job


@pytest.fixture
def worker(db_settings: Settings) -> Any:
    worker = Worker(db_settings, "worker-a")
    yield worker
    worker.wakeup.close()
    worker.db.dispose()


def test_out_of_memory_is_retried_once_with_half_the_batch(worker: Worker) -> None:
    with worker.db.session() as s:
        created, _ = jobs.create(s, TrainingConfig.model_validate({"training": {"per_device_train_batch_size": 4}}))
    job = claim(worker)
    failed = real_out_of_memory()
    assert failed.code == "out_of_memory" and "can't allocate memory" in failed.message
    # An auto batch measured by the first attempt: the retry must not keep it (recipe.batch_plan would).
    measured = RunFolder.of(worker.settings.runs_dir, job).batch_size
    measured.parent.mkdir(parents=True)
    measured.write_text("{}")
    # A checkpoint the attempt left half-written: the retry starts over, and must not find it later.
    stale = RunFolder.of(worker.settings.runs_dir, job).output_dir / "checkpoint-10"
    stale.mkdir(parents=True)

    retried = fail_while_training(worker, job, failed, BatchPlan(4, 2, auto=False))
    assert (retried.status, retried.resume_from, retried.error_code) == (JobStatus.queued, None, None)
    training = retried.training_config.training
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (2, 4)
    assert training.effective_batch == 8  # the same examples per optimizer step
    # Its files stay until the retried attempt holds the job: by then they could be another worker's.
    assert measured.exists() and stale.exists()
    shown = JobRead.from_job(retried).retries
    assert [(r.attempt, r.reason, r.step, r.resume_from) for r in shown] == [(1, "out_of_memory", 12, None)]
    assert shown[0].changes == {
        "training.per_device_train_batch_size": [4, 2],
        "training.gradient_accumulation_steps": [2, 4],
    }
    assert "can't allocate memory" in shown[0].message
    with worker.db.session() as s:
        requeued = events.before(s, created.id, None, 10)[0][0]
    assert requeued.type == events.EventType.requeued
    assert requeued.message == "retrying from the start with batch 2 x 4 after running out of memory at step 12"
    assert requeued.data["reason"] == "out_of_memory" and requeued.data["changes"] == shown[0].changes

    # The retry runs out of memory too: once per reason, then the failure stands.
    second = claim(worker)
    assert (second.id, second.attempt) == (created.id, 2)
    assert retries.clear_failed_attempt(second, RunFolder.of(worker.settings.runs_dir, second))
    assert not measured.exists() and not stale.exists()
    # A later attempt of the retry (resumed after a shutdown, say) keeps what the retried attempt wrote.
    measured.write_text("{}")
    later = second.model_copy(update={"attempt": 3})
    assert not retries.clear_failed_attempt(later, RunFolder.of(worker.settings.runs_dir, later))
    assert measured.exists()
    final = fail_while_training(worker, second, real_out_of_memory(), BatchPlan(2, 4, auto=False), step=3)
    assert (final.status, final.error_code, len(final.retries)) == (JobStatus.failed, "out_of_memory", 1)


@pytest.mark.parametrize(
    ("training", "batch", "phase"),
    [
        (
            {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8},
            BatchPlan(1, 8, auto=False),
            JobPhase.training,
        ),
        ({"auto_retry": False}, BatchPlan(2, 4, auto=False), JobPhase.training),
        ({}, BatchPlan(2, 4, auto=False), JobPhase.evaluate),  # not the training batch's to fix
    ],
    ids=["batch-of-one", "auto-retry-off", "outside-training"],
)
def test_out_of_memory_stands_when_there_is_nothing_to_heal(
    worker: Worker, training: dict[str, Any], batch: BatchPlan, phase: JobPhase
) -> None:
    with worker.db.session() as s:
        jobs.create(s, TrainingConfig.model_validate({"training": training}))
    final = fail_while_training(worker, claim(worker), real_out_of_memory(), batch, phase=phase)
    assert (final.status, final.error_code, final.retries) == (JobStatus.failed, "out_of_memory", [])
    assert final.training_config.training.per_device_train_batch_size == training.get("per_device_train_batch_size", 2)
