"""Self-healing (training.auto_retry): the failures a training job is retried for, once each, and the config the
retry runs with. The queue's transition is app.jobs.retry; the worker loop asks `plan` when a job fails.

- out_of_memory while training: resumed from its last checkpoint with half the per-device batch and twice the
  accumulation (the same effective batch). A batch of 1 has nothing to halve: the failure stands.
- diverged: from the start (a checkpoint's scheduler would keep the old learning rate) at half the learning rate.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField

from app.models import Job, JobKind, JobPhase
from app.run_folder import RunFolder
from app.training_config import TrainingConfig

RetryReason = Literal["out_of_memory", "diverged"]
"""The failure codes (worker.child.classify, worker.recipe.Diverged) a job is retried for."""


class Retry(BaseModel):
    """One automatic retry, as the job's `retries` keeps it."""

    attempt: int = PydanticField(description="The attempt that failed.")
    reason: RetryReason = PydanticField(description="out_of_memory or diverged.")
    message: str = PydanticField(description="The failure's message.")
    step: int = PydanticField(description="The training step the failed attempt had reached.")
    changes: dict[str, list[Any]] = PydanticField(description="Each config field changed: [as run, as retried].")
    resume_from: str | None = PydanticField(default=None, description="The checkpoint the retry resumes from.")


def plan(job: Job, code: str, message: str, checkpoint: str | None) -> tuple[Retry, dict[str, Any]] | None:
    """The retry a training job that failed with `code` gets, and its config for the retry; None when the failure
    stands (auto_retry off, already retried for this reason, or nothing left to change). `job` is its current row
    (its step and result as the failed attempt left them); `checkpoint` is its newest, for an out_of_memory."""
    config = job.training_config
    if job.kind != JobKind.training or not config.training.auto_retry or code not in ("out_of_memory", "diverged"):
        return None
    if any(done.get("reason") == code for done in job.retries):
        return None
    data = config.model_dump(mode="json")
    training = data["training"]
    if code == "diverged":
        rate = config.training.learning_rate
        changes: dict[str, list[Any]] = {"training.learning_rate": [rate, rate / 2]}
        training["learning_rate"] = rate / 2
        checkpoint = None
    else:
        batch = (job.result or {}).get("batch_size")  # the plan the attempt ran with (worker.batch_size.BatchPlan)
        # Out of memory elsewhere (the auto batch search, evaluation) is not the training batch's to fix.
        if job.phase != JobPhase.training or not batch or batch["per_device_train_batch_size"] <= 1:
            return None
        size, steps, ranks = batch["per_device_train_batch_size"], batch["gradient_accumulation_steps"], batch["ranks"]
        half = size // 2
        accumulation = -(-size * steps // half) * ranks  # the config's accumulation is over all ranks
        changes = {
            "training.per_device_train_batch_size": [size, half],
            "training.gradient_accumulation_steps": [steps * ranks, accumulation],
        }
        training.update(per_device_train_batch_size=half, gradient_accumulation_steps=accumulation)
        if training.get("effective_batch_size") is not None:  # only allowed with an auto batch
            changes["training.effective_batch_size"] = [training["effective_batch_size"], None]
            training["effective_batch_size"] = None
    retry = Retry(attempt=job.attempt, reason=code, message=message, step=job.step, changes=changes)
    retry.resume_from = checkpoint
    # Validated again: the retry's config obeys the same rules as a submitted one.
    return retry, TrainingConfig.model_validate(data).model_dump(mode="json")


def describe(retry: Retry) -> str:
    """The retry's event line: "retrying with batch 2 x 8 after running out of memory at step 12"."""
    if retry.reason == "diverged":
        old, new = retry.changes["training.learning_rate"]
        return f"retrying from the start at learning rate {new:g} (was {old:g}) after diverging at step {retry.step}"
    batch = retry.changes["training.per_device_train_batch_size"][1]
    steps = retry.changes["training.gradient_accumulation_steps"][1]
    where = f"from {retry.resume_from}" if retry.resume_from else "from the start"
    return f"retrying {where} with batch {batch} x {steps} after running out of memory at step {retry.step}"


def clear_failed_attempt(job: Job, folder: RunFolder) -> bool:
    """Run by a worker that just claimed `job`: when this is the first attempt after a retry, the failed attempt's
    measured batch goes (recipe.batch_plan would keep it on a resume), and so do its checkpoints when the retry
    starts over (they must neither be resumed nor outrank the new ones: save_total_limit keeps the newest).
    Cleared by the attempt that holds the job, not by the one that failed: by the time the requeue lands, the
    folder may be another worker's. A later attempt (the retry resumed after a shutdown) keeps its own files."""
    if not job.retries or job.retries[-1]["attempt"] != job.attempt - 1:
        return False
    folder.batch_size.unlink(missing_ok=True)
    if job.resume_from is None:
        shutil.rmtree(folder.output_dir, ignore_errors=True)
    return True
