"""/api/training: start, status, cancel, jobs, artifacts and reverify. Thin: the work is in app.jobs, app.artifacts
and app.release."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from app import artifacts, jobs, promotions, release
from app import status as training_status
from app.api.deps import SessionDep, SettingsDep, StatusCacheDep, error_responses, require_token, resolve_and_validate
from app.api.schemas import AcceptedModel, ArtifactList, JobPage, JobRead, PromoteRequest
from app.api.yaml_body import YAMLBodyRoute
from app.core.errors import Conflict
from app.models import ACTIVE_STATUSES, Job, JobStatus
from app.run_folder import RunFolder, checkpoint_finder
from app.status import TrainingStatus
from app.training_config import ExportRequest, ResumeRequest, TrainingConfig

router = APIRouter(
    prefix="/api/training",
    tags=["training"],
    dependencies=[Depends(require_token)],
    route_class=YAMLBodyRoute,
    responses=error_responses(
        e400="The body is not UTF-8 JSON (or YAML)",
        e401="No token, or a wrong one (when the server has FORGE_API_TOKEN)",
        e413="The request body is over FORGE_MAX_REQUEST_BYTES",
        e422="Invalid input; each problem is named in `details`",
    ),
)
NOT_FOUND = error_responses(e404="No such job")
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Retrying a POST with the same key returns the job the first one created "
        "(the same key with a different request is a 409).",
    ),
]
CONFLICT = error_responses(e409="The job is not in a state that allows this")


def _json(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


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
    responses=error_responses(e409="This Idempotency-Key was used for a different config"),
    openapi_extra={
        "requestBody": {"content": {"application/yaml": {"schema": {"$ref": "#/components/schemas/TrainingConfig"}}}}
    },
)
def start(
    config: TrainingConfig,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue a job from a training config in the spec's shape (JSON, or YAML with `Content-Type: application/yaml`)."""
    resolve_and_validate(settings, config)
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
def resume_job(
    job_id: str, session: SessionDep, settings: SettingsDep, request: Annotated[ResumeRequest | None, Body()] = None
) -> JobRead:
    """Queue again a job whose worker was lost or crashed; it continues from its newest complete checkpoint, or
    from the one the body names (`{"checkpoint": "checkpoint-40"}`)."""
    named = request.checkpoint if request else None
    finder = checkpoint_finder(settings.runs_dir, named)
    job = jobs.resume(session, job_id, finder)
    training_status.refresh_file(session, settings.status_file)
    return JobRead.from_job(job)


@router.post(
    "/jobs/{job_id}/exports",
    response_model=JobRead,
    status_code=status.HTTP_201_CREATED,
    summary="Export a finished job's adapters again, to other formats",
    responses=NOT_FOUND | error_responses(e409="The job has not finished, is an export job, or has no adapters"),
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

    def has_adapters(source: Job, checkpoint: str | None) -> bool:
        folder = RunFolder.of(settings.runs_dir, source)
        return ((folder.output_dir / checkpoint if checkpoint else folder.lora) / "adapter_config.json").is_file()

    job, created = jobs.create_export(session, job_id, request, has_adapters, idempotency_key=idempotency_key)
    if created:
        training_status.refresh_file(session, settings.status_file)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return JobRead.from_job(job)


@router.post(
    "/jobs/{job_id}/promote",
    response_model=AcceptedModel,
    summary="Make a succeeded job the project's accepted model",
    responses=NOT_FOUND | error_responses(e409="The job has not succeeded, failed a gate, or is an export job"),
)
def promote_job(
    job_id: str, session: SessionDep, request: Annotated[PromoteRequest | None, Body()] = None
) -> AcceptedModel:
    """Later jobs compare themselves with it on the same test split (the `no-regression` gate). A job that failed
    any gate is refused with 409 `gate_failed`, naming the gate."""
    request = request or PromoteRequest()
    promotion = promotions.promote(session, job_id, by=request.by, note=request.note)
    return AcceptedModel.of(promotion, jobs.get(session, job_id))


@router.get(
    "/accepted",
    response_model=AcceptedModel,
    summary="The project's accepted model",
    responses=error_responses(e404="No job was promoted yet"),
)
def get_accepted(session: SessionDep) -> AcceptedModel:
    return AcceptedModel.of(*promotions.accepted(session))


@router.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, summary="A job's files", responses=NOT_FOUND)
def list_artifacts(job_id: str, session: SessionDep, settings: SettingsDep) -> ArtifactList:
    job = jobs.get(session, job_id)
    return ArtifactList(job_id=job.id, items=artifacts.listing(RunFolder.of(settings.runs_dir, job)))


@router.get(
    "/jobs/{job_id}/artifacts/{path:path}",
    response_class=FileResponse,
    summary="Download one of a job's files",
    responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(e404="No such job or file")},
)
def download_artifact(job_id: str, path: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """Streams the file; nothing outside the job's run folder can be reached, whatever the path says."""
    job = jobs.get(session, job_id)
    file = artifacts.resolve(RunFolder.of(settings.runs_dir, job).root, path)
    return FileResponse(file, filename=file.name)


@router.post(
    "/jobs/{job_id}/reverify",
    response_model=release.Reverification,
    summary="Hash a finished job's release again and report what changed",
    responses=NOT_FOUND | error_responses(e409="The job has no release.json (it has not succeeded)"),
)
def reverify_job(job_id: str, session: SessionDep, settings: SettingsDep) -> release.Reverification:
    """Every file release.json lists (artifacts, dataset files, base model, an export's adapters) hashed again:
    each one changed, missing or added is a `difference`. The GGUF check is not run again (the API runs no model):
    `gguf_check` says whether the files it passed are byte-identical still. A plain `def`: FastAPI runs it in a
    worker thread, so hashing gigabytes never blocks the event loop."""
    job = jobs.get(session, job_id)
    return release.reverify(RunFolder.of(settings.runs_dir, job), job)
