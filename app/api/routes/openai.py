"""/v1: the OpenAI fine-tuning API (files, fine_tuning.jobs, their events and checkpoints) over Forge's jobs.

Point the `openai` SDK at it with `OpenAI(base_url="http://host:8000/v1", api_key=<FORGE_API_TOKEN or any>)`.
Thin routes: the mapping is in app.openai_compat, the jobs are app.jobs' own. Errors come in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from app import jobs, openai_compat
from app import status as training_status
from app.api.deps import SessionDep, SettingsDep, require_token, resolve_and_validate
from app.core.errors import ForgeError
from app.openai_compat import JobRequest

FILES_PATH = "/v1/files"

_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 500: "server_error"}


def error_response(status_code: int, message: str, param: str | None, code: str | None) -> JSONResponse:
    kind = _TYPES.get(status_code, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return JSONResponse(body, status_code=status_code, headers=headers)


def _forge_error(exc: ForgeError) -> JSONResponse:
    message = exc.message
    if isinstance(exc.details, list) and exc.details and exc.code == "dataset_invalid":
        # The bad rows by line (file:line: what is wrong), as the dataset routes list them in `details`.
        message += ". " + "; ".join(str(d["message"]) for d in exc.details[:5])
    return error_response(exc.status_code, message, exc.param, exc.code)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    problems = exc.errors()
    first = problems[0] if problems else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")) or None
    summary = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('body', 'query', 'path'))}: {e.get('msg', '')}"
        for e in problems[:5]
    )
    return error_response(400, f"invalid request: {summary}", param, "invalid_request")


class OpenAIRoute(APIRoute):
    """Every error raised while handling a /v1 request (auth, validation, Forge's own) in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ForgeError as exc:
                return _forge_error(exc)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except HTTPException as exc:
                return error_response(exc.status_code, str(exc.detail), None, None)

        return route_handler


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error or server_error.")
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """Every /v1 error has OpenAI's shape."""

    error: OpenAIErrorDetail


def _errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    return {int(code.removeprefix("e")): {"model": OpenAIError, "description": text} for code, text in codes.items()}


router = APIRouter(
    prefix="/v1",
    tags=["openai"],
    dependencies=[Depends(require_token)],
    route_class=OpenAIRoute,
    responses=_errors(
        e400="Invalid request (each problem named in the message)",
        e401="No token, or a wrong one (when the server has FORGE_API_TOKEN)",
        e404="No such file or job",
        e409="The job is not in a state that allows this",
        e413="The request body is over its size limit",
        e422="The file or the config cannot train (the bad line, or the field)",
    ),
)


class ListObject(BaseModel):
    object: str = "list"
    data: list[dict[str, Any]]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def _list(items: list[dict[str, Any]], has_more: bool) -> ListObject:
    return ListObject(
        data=items,
        has_more=has_more,
        first_id=items[0]["id"] if items else None,
        last_id=items[-1]["id"] if items else None,
    )


Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]
After = Annotated[str | None, Query(max_length=64, description="The last id of the previous page.")]


# ---------------------------------------------------------------- files


@router.post("/files", status_code=status.HTTP_200_OK, summary="Upload a JSONL training file")
def create_file(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL: one chat per line (messages), or any Forge format.")],
    purpose: Annotated[str, Form(max_length=32, description="fine-tune")],
) -> dict[str, Any]:
    """Validated row by row like a dataset upload: a bad row is a 400/422 naming its line, and the file is not kept."""
    project = settings.resolved_project_dir
    row = openai_compat.upload(session, project, file.file, file.filename or "", purpose, settings.max_upload_rows)
    return openai_compat.file_object(row)


@router.get("/files", response_model=ListObject, summary="List uploaded files, newest first")
def list_files(session: SessionDep) -> ListObject:
    return _list([openai_compat.file_object(row) for row in openai_compat.list_files(session)], False)


@router.get("/files/{file_id}", summary="One uploaded file")
def retrieve_file(file_id: str, session: SessionDep) -> dict[str, Any]:
    return openai_compat.file_object(openai_compat.get_file(session, file_id))


@router.delete("/files/{file_id}", summary="Delete an uploaded file")
def delete_file(file_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    openai_compat.delete_file(session, settings.resolved_project_dir, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


# ---------------------------------------------------------------- fine-tuning jobs


@router.post("/fine_tuning/jobs", summary="Create a fine-tuning job")
def create_job(request: JobRequest, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Queued on Forge's own queue, checked as POST /api/training checks a config (files, model, every row)."""
    config = openai_compat.training_config(session, settings.resolved_project_dir, request)
    resolve_and_validate(settings, config)
    job, _ = jobs.create(session, config)
    extra = openai_compat.record_job(session, job, request)
    training_status.refresh_file(session, settings.status_file)
    return openai_compat.job_object(job, extra)


@router.get("/fine_tuning/jobs", response_model=ListObject, summary="List fine-tuning jobs, newest first")
def list_jobs(session: SessionDep, after: After = None, limit: Limit = 20) -> ListObject:
    rows, more = openai_compat.page_jobs(session, after, limit)
    found = openai_compat.extras(session, [job.id for job in rows])
    return _list([openai_compat.job_object(job, found.get(job.id)) for job in rows], more)


@router.get("/fine_tuning/jobs/{job_id}", summary="One fine-tuning job")
def retrieve_job(job_id: str, session: SessionDep) -> dict[str, Any]:
    job, extra = openai_compat.get_job(session, job_id)
    return openai_compat.job_object(job, extra)


@router.post("/fine_tuning/jobs/{job_id}/cancel", summary="Cancel a fine-tuning job")
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """A queued job is cancelled at once; a running one shows `running` until it stops after its current step."""
    openai_compat.get_job(session, job_id)
    job = jobs.request_cancel(session, job_id)
    training_status.refresh_file(session, settings.status_file)
    return openai_compat.job_object(job, session.get(openai_compat.OpenAIJob, job_id))


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=ListObject, summary="A job's events, newest first")
def list_events(job_id: str, session: SessionDep, after: After = None, limit: Limit = 20) -> ListObject:
    openai_compat.get_job(session, job_id)
    rows, more = openai_compat.page_events(session, job_id, after, limit)
    return _list([openai_compat.event_object(row) for row in rows], more)


@router.get(
    "/fine_tuning/jobs/{job_id}/checkpoints", response_model=ListObject, summary="A job's checkpoints, newest first"
)
def list_checkpoints(
    job_id: str, session: SessionDep, settings: SettingsDep, after: After = None, limit: Limit = 10
) -> ListObject:
    job, extra = openai_compat.get_job(session, job_id)
    items = openai_compat.checkpoint_objects(settings.runs_dir, job, extra)
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return _list(items[:limit], len(items) > limit)
