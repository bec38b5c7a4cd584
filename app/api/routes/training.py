"""/api/training: start, status, cancel, jobs and artifacts. Thin: the work is in app.jobs and app.artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from app import artifacts, checkpoints, files, jobs, weights
from app import status as training_status
from app.api.deps import SessionDep, SettingsDep, StatusCacheDep, require_token
from app.api.yaml_body import YAMLBodyRoute
from app.core.config import Settings
from app.core.errors import Conflict, InvalidInput
from app.datasets import check as dataset_check
from app.models import ACTIVE_STATUSES, ArtifactList, ErrorBody, Job, JobPage, JobRead, JobStatus, TrainingStatus
from app.training_config import EMBEDDED_MODEL, ExportRequest, TrainingConfig


def _errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    return {int(code.removeprefix("e")): {"model": ErrorBody, "description": text} for code, text in codes.items()}


router = APIRouter(
    prefix="/api/training",
    tags=["training"],
    dependencies=[Depends(require_token)],
    route_class=YAMLBodyRoute,
    responses=_errors(
        e400="The body is not UTF-8 JSON (or YAML)",
        e401="No token, or a wrong one (when the server has FORGE_API_TOKEN)",
        e413="The request body is over FORGE_MAX_REQUEST_BYTES",
        e422="Invalid input; each problem is named in `details`",
    ),
)
NOT_FOUND = _errors(e404="No such job")
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Retrying a POST with the same key returns the job the first one created "
        "(the same key with a different request is a 409).",
    ),
]
CONFLICT = _errors(e409="The job is not in a state that allows this")


def _confined(value: str, param: str, roots: list[Path], what: str) -> Path:
    """`value` resolved (symlinks followed) relative to the first root; it must land inside one of the roots."""
    path = files.expand_home(value)
    resolved = (path if path.is_absolute() else roots[0] / path).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise InvalidInput(
            f"{param} {value!r} resolves to {resolved}, outside {what}; use a path inside it",
            code="path_outside_project",
            param=param,
        )
    return resolved


def check_files(settings: Settings, config: TrainingConfig) -> None:
    """Catch what would fail in the worker minutes later: files that are not there, or not ours to read."""
    project = settings.resolved_project_dir
    dataset = _confined(config.dataset.path, "dataset.path", [project], f"the project directory {project}")
    if not dataset.is_file():
        raise InvalidInput(
            f"dataset.path {config.dataset.path!r} does not exist (looked for {dataset}); "
            "run Phase 3 (split) first or give the path of a ShareGPT JSONL file relative to the project",
            code="dataset_not_found",
            param="dataset.path",
        )
    check_evaluation_files(project, config)
    name = config.model.name
    if name.startswith("embedded:"):
        if name != EMBEDDED_MODEL:
            raise InvalidInput(
                f"model.name {name!r}: the only embedded model is {EMBEDDED_MODEL!r}",
                code="model_not_found",
                param="model.name",
            )
        weights.check_target_modules(config, weights.EMBEDDED_MODULES)
    elif name.startswith(("/", "./", "../", "~")) or (project / name).exists():
        roots = [project, *(folder.expanduser().resolve() for folder in settings.model_dirs)]
        folder = _confined(name, "model.name", roots, "the project and FORGE_MODEL_DIRS")
        if not (folder / "config.json").is_file():
            raise InvalidInput(
                f"model.name {name!r} is not a model folder (no config.json in {folder})",
                code="model_not_found",
                param="model.name",
            )
        weights.check_target_modules(config, weights.module_names(folder))


def _json(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


def validate_data(settings: Settings, config: TrainingConfig) -> None:
    """Every row of the dataset files, before a GPU minute is spent: 422 with the report when they cannot train."""
    project, model_dirs = settings.resolved_project_dir, list(settings.model_dirs)
    report = dataset_check.for_config(config, project, model_dirs, settings.cache_dir).report
    if not report.ok:
        raise dataset_check.as_error(report)


def check_evaluation_files(project: Path, config: TrainingConfig) -> None:
    """The test split the baseline and evaluate steps score, and the localization glossary."""
    settings = config.evaluation
    wanted = []
    if settings.baseline or settings.evaluate:
        wanted.append(
            (
                "evaluation.test_path",
                settings.test_path,
                "test_set_not_found",
                "run Phase 3 (split) first, or set evaluation.baseline and evaluation.evaluate to false",
            )
        )
    if settings.glossary_path is not None:
        wanted.append(("evaluation.glossary_path", settings.glossary_path, "glossary_not_found", "or set it to null"))
    for param, value, code, advice in wanted:
        path = _confined(value, param, [project], f"the project directory {project}")
        if not path.is_file():
            message = f"{param} {value!r} does not exist (looked for {path}); {advice}"
            raise InvalidInput(message, code=code, param=param)
        if param == "evaluation.test_path":
            dataset_check.test_split(path, str(path.relative_to(project)), settings.terms_field)


@router.get("", response_model=TrainingStatus, summary="Status of the current job (Forge UI)")
async def get_status(cache: StatusCacheDep) -> Response:
    """The running job, else the latest job, else an idle object: the flat shape TrainingProgress.tsx polls."""
    # Served from memory until the database changes (app.status.StatusCache): polling costs no query.
    return _json(cache.status())


@router.post(
    "",
    response_model=JobRead,
    status_code=status.HTTP_201_CREATED,
    summary="Start a fine-tuning job",
    responses=_errors(e409="This Idempotency-Key was used for a different config"),
)
def start(
    config: TrainingConfig,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue a job from a training config in the spec's shape (JSON, or YAML with `Content-Type: application/yaml`)."""
    check_files(settings, config)
    validate_data(settings, config)
    job, created = jobs.create(session, config, idempotency_key=idempotency_key)
    if created:
        training_status.refresh_file(session, settings.status_file)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return JobRead.from_job(job)


@router.post("/cancel", response_model=JobRead, summary="Cancel the current job", responses=CONFLICT)
def cancel_current(session: SessionDep, settings: SettingsDep) -> JobRead:
    current = jobs.current(session)
    if current is None or current.status not in (JobStatus.queued, *ACTIVE_STATUSES):
        raise Conflict("no queued or running job to cancel", code="nothing_to_cancel")
    return cancel_job(current.id, session, settings)


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=200, description="Jobs per page.")
    # SQLite integers are 64-bit: a larger offset would overflow in the driver (found by the fuzz).
    offset: int = Field(default=0, ge=0, le=2**63 - 1, description="Jobs to skip, newest first.")


@router.get("/jobs", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(session: SessionDep, query: Annotated[PageQuery, Query()]) -> JobPage:
    rows, total = jobs.page(session, limit=query.limit, offset=query.offset)
    return JobPage(items=[JobRead.from_job(job) for job in rows], total=total, limit=query.limit, offset=query.offset)


@router.get("/jobs/{job_id}", response_model=JobRead, summary="One job", responses=NOT_FOUND)
async def get_job(job_id: str, cache: StatusCacheDep) -> Response:
    return _json(cache.job(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobRead, summary="Cancel a job", responses=NOT_FOUND | CONFLICT)
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep) -> JobRead:
    """A queued job is cancelled at once; a running one stops at the end of its current step."""
    job = jobs.request_cancel(session, job_id)
    training_status.refresh_file(session, settings.status_file)
    return JobRead.from_job(job)


@router.post(
    "/jobs/{job_id}/resume",
    response_model=JobRead,
    summary="Resume a job from its last checkpoint",
    responses=NOT_FOUND | CONFLICT,
)
def resume_job(job_id: str, session: SessionDep, settings: SettingsDep) -> JobRead:
    """Queue again a job whose worker was lost or crashed; it continues from its newest complete checkpoint."""
    job = jobs.resume(session, job_id, lambda job: checkpoints.for_job(settings.runs_dir, job))
    training_status.refresh_file(session, settings.status_file)
    return JobRead.from_job(job)


@router.post(
    "/jobs/{job_id}/exports",
    response_model=JobRead,
    status_code=status.HTTP_201_CREATED,
    summary="Export a finished job's adapters again, to other formats",
    responses=NOT_FOUND | _errors(e409="The job has not finished, is an export job, or has no adapters"),
)
def export_job(
    job_id: str,
    request: ExportRequest,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue an export job: the training job's LoRA adapters merged into the base model again and written as
    GGUF files (and a merged model if asked), without retraining. It runs through the same worker queue, with
    progress, cancel and artifacts like any job, and its GGUF files pass the `quantization-verified` gate."""

    def has_adapters(source: Job) -> bool:
        lora = artifacts.run_dir(settings.runs_dir, source.id) / source.config["save"]["lora_path"]
        return (lora / "adapter_config.json").is_file()

    job, created = jobs.create_export(session, job_id, request, has_adapters, idempotency_key=idempotency_key)
    if created:
        training_status.refresh_file(session, settings.status_file)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return JobRead.from_job(job)


@router.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, summary="A job's files", responses=NOT_FOUND)
def list_artifacts(job_id: str, session: SessionDep, settings: SettingsDep) -> ArtifactList:
    job = jobs.get(session, job_id)
    root = artifacts.run_dir(settings.runs_dir, job.id)
    return ArtifactList(job_id=job.id, items=artifacts.listing(root, job.config.get("save")))


@router.get(
    "/jobs/{job_id}/artifacts/{path:path}",
    response_class=FileResponse,
    summary="Download one of a job's files",
    responses={200: {"content": {"application/octet-stream": {}}}, **_errors(e404="No such job or file")},
)
def download_artifact(job_id: str, path: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """Streams the file; nothing outside the job's run folder can be reached, whatever the path says."""
    job = jobs.get(session, job_id)
    file = artifacts.resolve(artifacts.run_dir(settings.runs_dir, job.id), path)
    return FileResponse(file, filename=file.name)
