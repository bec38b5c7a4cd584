"""The OpenAI fine-tuning API's files and jobs, mapped onto Forge's own: one queue, one job table.

A `/v1/files` upload is a JSONL file under the project (data/openai-files/), validated like a dataset upload.
A `/v1/fine_tuning/jobs` request becomes a TrainingConfig and an ordinary job (app.jobs.create); what only the
OpenAI shape has (the file ids, the suffix, the hyperparameters as asked, metadata) is kept beside it in
`openai_job`. Jobs submitted through /api/training show up in /v1 too.
"""

from __future__ import annotations

import math
import secrets
from datetime import datetime
from pathlib import Path, PurePath
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import JSON, Column
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from app import checkpoints, events, jobs
from app.core.errors import InvalidInput, NotFound, TooLarge
from app.datasets import job_data, store
from app.events import Event, EventLevel, EventType
from app.models import TERMINAL_STATUSES, Job, JobKind, JobStatus, UTCDateTime, utcnow
from app.resolve import is_path
from app.run_folder import RunFolder
from app.training_config import TrainingConfig, TrainingSection

FILES_DIR = Path("data") / "openai-files"
PURPOSE = "fine-tune"
DEFAULT_LEARNING_RATE: float = TrainingSection.model_fields["learning_rate"].default
# OpenAI's status names; Forge's `cancelling` is still running until the worker has stopped it.
STATUS = {
    JobStatus.queued: "queued",
    JobStatus.running: "running",
    JobStatus.cancelling: "running",
    JobStatus.succeeded: "succeeded",
    JobStatus.failed: "failed",
    JobStatus.cancelled: "cancelled",
}


class OpenAIFile(SQLModel, table=True):
    """A file uploaded through POST /v1/files."""

    __tablename__ = "openai_file"

    id: str = SQLField(primary_key=True, max_length=40)
    filename: str = SQLField(max_length=255)
    purpose: str = SQLField(max_length=32)
    bytes: int
    path: str = SQLField(max_length=512, description="Relative to the project.")
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class OpenAIJob(SQLModel, table=True):
    """What a job created through POST /v1/fine_tuning/jobs was asked with, in OpenAI's terms."""

    __tablename__ = "openai_job"

    job_id: str = SQLField(primary_key=True, max_length=32)
    training_file: str = SQLField(max_length=40)
    validation_file: str | None = SQLField(default=None, max_length=40)
    suffix: str | None = SQLField(default=None, max_length=64)
    hyperparameters: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    user_metadata: dict[str, str] | None = SQLField(default=None, sa_column=Column(JSON, nullable=True))


# ---------------------------------------------------------------- files


def _unix(when: datetime | None) -> int | None:
    return int(when.timestamp()) if when is not None else None


def file_object(row: OpenAIFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": _unix(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def upload(
    session: Session, project: Path, source: IO[bytes], filename: str, purpose: str, max_rows: int
) -> OpenAIFile:
    """Store and validate an upload; a file with a bad row is not kept (422 naming the line)."""
    if purpose != PURPOSE:
        raise InvalidInput(
            f"purpose {purpose!r} is not supported: Forge Trainer takes files for fine-tuning, purpose={PURPOSE!r}",
            code="invalid_purpose",
            param="purpose",
        )
    file_id = "file-" + secrets.token_hex(12)
    shown = PurePath(filename).name or "upload.jsonl"
    target = project / FILES_DIR / f"{file_id}.jsonl"
    # A hidden name of its own first: a file that fails validation is never stored under its id.
    staging = store.stage(source, target)
    try:
        lines = store.count_lines(staging)
        if lines > max_rows:
            raise TooLarge(
                f"the file has {lines} lines, over the {max_rows}-row limit (FORGE_MAX_UPLOAD_ROWS); "
                "split it into smaller files",
                code="too_many_rows",
                param="file",
            )
        size = staging.stat().st_size
        # The model is not known yet: rows are checked for format and content; lengths when a job is created.
        report = job_data.in_child(job_data.rows_only, staging, shown, "lengths are checked when a job is created")
        if not report.ok:
            raise job_data.as_error(report)
        store.publish(staging, target, overwrite=False)
    finally:
        staging.unlink(missing_ok=True)
    row = OpenAIFile(
        id=file_id, filename=shown, purpose=purpose, bytes=size, path=target.relative_to(project).as_posix()
    )
    session.add(row)
    session.commit()
    return row


def get_file(session: Session, file_id: str, param: str = "file_id") -> OpenAIFile:
    row = session.get(OpenAIFile, file_id)
    if row is None:
        raise NotFound(f"no file with id {file_id!r}; upload one with POST /v1/files", param=param)
    return row


def list_files(session: Session) -> list[OpenAIFile]:
    return list(session.exec(select(OpenAIFile).order_by(col(OpenAIFile.created_at).desc())).all())


def delete_file(session: Session, project: Path, file_id: str) -> None:
    row = get_file(session, file_id)
    (project / row.path).unlink(missing_ok=True)
    session.delete(row)
    session.commit()


# ---------------------------------------------------------------- jobs


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = Field(default="auto", description="Passes over the data (num_train_epochs).")
    batch_size: int | Literal["auto"] = Field(
        default="auto", description="Examples per optimizer step; auto: Forge's default (2 x 4 accumulation)."
    )
    learning_rate_multiplier: float | Literal["auto"] = Field(
        default="auto", description=f"Times Forge's default learning rate, {DEFAULT_LEARNING_RATE}."
    )


class Supervised(BaseModel):
    model_config = ConfigDict(extra="allow")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["supervised"] = Field(description="Forge Trainer fine-tunes supervised (SFT with LoRA) only.")
    supervised: Supervised | None = None


class JobRequest(BaseModel):
    """POST /v1/fine_tuning/jobs, as the OpenAI SDK sends it, plus `forge`: Forge's own training config."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="A local model folder, a hub id the worker has, or embedded:...")
    training_file: str = Field(min_length=1, max_length=40)
    validation_file: str | None = Field(default=None, max_length=40)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="Not supported.")
    forge: dict[str, Any] | None = Field(
        default=None,
        description="Forge's training config (the /api/training body) under the OpenAI fields, e.g. "
        '{"training": {"max_steps": 100}, "lora": {"r": 16}}; the OpenAI fields win where both are given.',
    )

    @property
    def chosen_hyperparameters(self) -> Hyperparameters:
        if self.method is not None and self.method.supervised and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def training_config(session: Session, project: Path, request: JobRequest) -> TrainingConfig:
    """The request as a TrainingConfig: `forge` first, then the OpenAI fields over it."""
    train = get_file(session, request.training_file, "training_file")
    wanted: dict[str, Any] = {"model": {"name": request.model}, "dataset": {"path": train.path, "val_path": None}}
    if request.validation_file is not None:
        wanted["dataset"]["val_path"] = get_file(session, request.validation_file, "validation_file").path
    hp = request.chosen_hyperparameters
    training: dict[str, Any] = {}
    if hp.n_epochs != "auto":
        training["num_train_epochs"] = hp.n_epochs
    if hp.batch_size != "auto":
        training |= {"per_device_train_batch_size": hp.batch_size, "gradient_accumulation_steps": 1}
    if hp.learning_rate_multiplier != "auto":
        training["learning_rate"] = DEFAULT_LEARNING_RATE * hp.learning_rate_multiplier
    if request.seed is not None:
        training["seed"] = request.seed
    if training:
        wanted["training"] = training
    forge = request.forge or {}
    # The baseline and evaluate steps score a test split; an OpenAI client has the validation file at most.
    if "test_path" not in forge.get("evaluation", {}):
        if request.validation_file is not None:
            wanted["evaluation"] = {"test_path": wanted["dataset"]["val_path"]}
        elif not (project / TrainingConfig().evaluation.test_path).is_file():
            wanted["evaluation"] = {"baseline": False, "evaluate": False}
    try:
        return TrainingConfig.model_validate(_merge(forge, wanted))
    except ValidationError as exc:
        problem = exc.errors()[0]
        param = ".".join(str(part) for part in problem["loc"])
        raise InvalidInput(
            f"{param}: {problem['msg']} (set from hyperparameters, seed, or the `forge` config)",
            code="invalid_config",
            param=param,
        ) from None


def record_job(session: Session, job: Job, request: JobRequest) -> OpenAIJob:
    row = OpenAIJob(
        job_id=job.id,
        training_file=request.training_file,
        validation_file=request.validation_file,
        suffix=request.suffix,
        hyperparameters=request.chosen_hyperparameters.model_dump(),
        user_metadata=request.metadata,
    )
    session.add(row)
    session.commit()
    return row


def _model_name(name: str) -> str:
    """A model folder by its folder name; hub ids and embedded names as they are."""
    return PurePath(name).name if is_path(name) else name


def fine_tuned_model(job: Job, extra: OpenAIJob | None) -> str | None:
    if job.status != JobStatus.succeeded:
        return None
    suffix = extra.suffix if extra and extra.suffix else "forge"
    return f"ft:{_model_name(job.training_config.model.name)}:{suffix}:{job.id}"


def _reported_hyperparameters(config: TrainingConfig) -> dict[str, Any]:
    training = config.training
    epochs = training.num_train_epochs
    per_device, accumulation = training.per_device_train_batch_size, training.gradient_accumulation_steps
    batch = per_device * accumulation if isinstance(per_device, int) and isinstance(accumulation, int) else "auto"
    return {
        "n_epochs": int(epochs) if float(epochs).is_integer() else epochs,
        "batch_size": batch,
        "learning_rate_multiplier": round(training.learning_rate / DEFAULT_LEARNING_RATE, 6),
    }


def job_object(job: Job, extra: OpenAIJob | None) -> dict[str, Any]:
    """A job in the shape of OpenAI's `fine_tuning.job`."""
    config = job.training_config
    hyperparameters = _reported_hyperparameters(config)
    estimated = None
    if job.status in (JobStatus.running, JobStatus.cancelling) and job.eta_seconds is not None:
        estimated = int(utcnow().timestamp() + job.eta_seconds)
    error = None
    if job.status == JobStatus.failed:
        error = {"code": job.error_code or "failed", "message": job.error_message or "", "param": None}
    result = job.result or {}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": _unix(job.created_at),
        "finished_at": _unix(job.finished_at) if job.status in TERMINAL_STATUSES else None,
        "model": config.model.name,
        "fine_tuned_model": fine_tuned_model(job, extra),
        "organization_id": "forge",
        "status": STATUS[job.status],
        "training_file": extra.training_file if extra else config.dataset.path,
        "validation_file": extra.validation_file if extra else config.dataset.val_path,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "result_files": [],
        "trained_tokens": result.get("tokens_seen") if job.status == JobStatus.succeeded else None,
        "seed": config.training.seed,
        "estimated_finish": estimated,
        "integrations": [],
        "metadata": extra.user_metadata if extra else None,
        "user_provided_suffix": extra.suffix if extra else None,
        "error": error,
    }


def extras(session: Session, job_ids: list[str]) -> dict[str, OpenAIJob]:
    if not job_ids:
        return {}
    rows = session.exec(select(OpenAIJob).where(col(OpenAIJob.job_id).in_(job_ids))).all()
    return {row.job_id: row for row in rows}


def get_job(session: Session, job_id: str) -> tuple[Job, OpenAIJob | None]:
    job = jobs.get(session, job_id)
    if job.kind != JobKind.training:
        raise NotFound(f"job {job_id!r} is an export job, not a fine-tuning job", param="fine_tuning_job_id")
    return job, session.get(OpenAIJob, job_id)


def page_jobs(session: Session, after: str | None, limit: int) -> tuple[list[Job], bool]:
    """Training jobs newest first; `after`: the last id of the previous page."""
    query = select(Job).where(Job.kind == JobKind.training)
    if after is not None:
        anchor = jobs.get(session, after)
        query = query.where(
            (col(Job.created_at) < anchor.created_at)
            | ((col(Job.created_at) == anchor.created_at) & (col(Job.id) < anchor.id))
        )
    rows = session.exec(query.order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(limit + 1)).all()
    return list(rows[:limit]), len(rows) > limit


def event_object(event: Event) -> dict[str, Any]:
    level = {EventLevel.info: "info", EventLevel.warning: "warn", EventLevel.error: "error"}[event.level]
    return {
        "id": str(event.id),
        "object": "fine_tuning.job.event",
        "created_at": _unix(event.created_at),
        "level": level,
        "message": event.message,
        "data": event.data,
        "type": "metrics" if event.type == EventType.metrics else "message",
    }


def page_events(session: Session, job_id: str, after: str | None, limit: int) -> tuple[list[Event], bool]:
    """Newest first, as OpenAI lists them; `after`: the last id of the previous page (older ones follow)."""
    cursor = None
    if after is not None:
        if not after.isdigit():
            raise InvalidInput(f"after {after!r} is not an event id (a number)", code="invalid_cursor", param="after")
        cursor = int(after)
    return events.before(session, job_id, cursor, limit)


def checkpoint_objects(runs_dir: Path, job: Job, extra: OpenAIJob | None) -> list[dict[str, Any]]:
    """Newest first, as OpenAI lists them."""
    base = f"ft:{_model_name(job.training_config.model.name)}:{extra.suffix if extra and extra.suffix else 'forge'}"
    run = RunFolder.of(runs_dir, job)
    found = checkpoints.listing(run.root, run.output_dir)
    return [
        {
            "id": f"ftckpt-{job.id}-{item.step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": _unix(item.created_at),
            "fine_tuned_model_checkpoint": f"{base}:{job.id}:ckpt-step-{item.step}",
            "fine_tuning_job_id": job.id,
            "step_number": item.step,
            "metrics": {
                "step": float(item.step),
                "train_loss": _finite(item.train_loss),
                "valid_loss": _finite(item.eval_loss),
                "full_valid_loss": _finite(item.eval_loss),
            },
        }
        for item in reversed(found)
        if item.complete
    ]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
