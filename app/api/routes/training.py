"""/api/training: start, status, cancel, jobs and artifacts. Thin: the work is in app.jobs and app.artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import FileResponse

from app import artifacts, jobs
from app import status as training_status
from app.api.deps import SessionDep, SettingsDep, require_token
from app.api.yaml_body import YAMLBodyRoute
from app.core.config import Settings
from app.core.errors import Conflict, InvalidInput
from app.models import ArtifactList, JobPage, JobRead, JobStatus, TrainingStatus
from app.training_config import EMBEDDED_MODEL, TrainingConfig

router = APIRouter(
    prefix="/api/training",
    tags=["training"],
    dependencies=[Depends(require_token)],
    route_class=YAMLBodyRoute,
)


def _inside_project(settings: Settings, value: str, param: str) -> Path:
    root = settings.resolved_project_dir
    path = Path(value).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not resolved.is_relative_to(root):
        raise InvalidInput(
            f"{param} {value!r} points outside the project directory {root}; use a path inside it",
            code="path_outside_project",
            param=param,
        )
    return resolved


def check_files(settings: Settings, config: TrainingConfig) -> None:
    """Catch what would fail in the worker minutes later: files that are not there."""
    dataset = _inside_project(settings, config.dataset.path, "dataset.path")
    if not dataset.is_file():
        raise InvalidInput(
            f"dataset.path {config.dataset.path!r} does not exist (looked for {dataset}); "
            "run Phase 3 (split) first or give the path of a ShareGPT JSONL file relative to the project",
            code="dataset_not_found",
            param="dataset.path",
        )
    name = config.model.name
    if name.startswith("embedded:"):
        if name != EMBEDDED_MODEL:
            raise InvalidInput(
                f"model.name {name!r}: the only embedded model is {EMBEDDED_MODEL!r}",
                code="model_not_found",
                param="model.name",
            )
    elif name.startswith(("/", "./", "../", "~")):
        path = Path(name).expanduser()
        folder = path if path.is_absolute() else settings.resolved_project_dir / path
        if not (folder / "config.json").is_file():
            raise InvalidInput(
                f"model.name {name!r} is not a model folder (no config.json in {folder})",
                code="model_not_found",
                param="model.name",
            )


@router.get("", response_model=TrainingStatus, summary="Status of the current job (Forge UI)")
def get_status(session: SessionDep) -> TrainingStatus:
    """The running job, else the latest job, else an idle object: the flat shape TrainingProgress.tsx polls."""
    return training_status.of_job(jobs.current(session))


@router.post(
    "",
    response_model=JobRead,
    status_code=status.HTTP_201_CREATED,
    summary="Start a fine-tuning job",
    responses={422: {"description": "The config or its files are invalid; each problem is named."}},
    openapi_extra={
        "requestBody": {"content": {"application/yaml": {"schema": {"$ref": "#/components/schemas/TrainingConfig"}}}}
    },
)
def start(config: TrainingConfig, session: SessionDep, settings: SettingsDep) -> JobRead:
    """Queue a job from a training config in the spec's shape (JSON, or YAML with `Content-Type: application/yaml`)."""
    check_files(settings, config)
    return JobRead.from_job(jobs.create(session, config))


@router.post("/cancel", response_model=JobRead, summary="Cancel the current job")
def cancel_current(session: SessionDep) -> JobRead:
    current = jobs.current(session)
    if current is None or current.status not in (JobStatus.queued, JobStatus.running):
        raise Conflict("no queued or running job to cancel", code="nothing_to_cancel")
    return JobRead.from_job(jobs.request_cancel(session, current.id))


@router.get("/jobs", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    rows, total = jobs.page(session, limit=limit, offset=offset)
    return JobPage(items=[JobRead.from_job(job) for job in rows], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobRead, summary="One job")
def get_job(job_id: str, session: SessionDep) -> JobRead:
    return JobRead.from_job(jobs.get(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobRead, summary="Cancel a job")
def cancel_job(job_id: str, session: SessionDep) -> JobRead:
    """A queued job is cancelled at once; a running one stops at the end of its current step."""
    return JobRead.from_job(jobs.request_cancel(session, job_id))


@router.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, summary="A job's files")
def list_artifacts(job_id: str, session: SessionDep, settings: SettingsDep) -> ArtifactList:
    job = jobs.get(session, job_id)
    root = artifacts.run_dir(settings.runs_dir, job.id)
    return ArtifactList(job_id=job.id, items=artifacts.listing(root, job.config.get("save")))


@router.get(
    "/jobs/{job_id}/artifacts/{path:path}",
    response_class=FileResponse,
    summary="Download one of a job's files",
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {"description": "No such file"}},
)
def download_artifact(job_id: str, path: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """Streams the file; nothing outside the job's run folder can be reached, whatever the path says."""
    job = jobs.get(session, job_id)
    file = artifacts.resolve(artifacts.run_dir(settings.runs_dir, job.id), path)
    return FileResponse(file, filename=file.name)
