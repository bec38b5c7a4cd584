"""Builds the FastAPI app: settings, database (migrated at start-up), routes and the one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import jobs
from app import status as training_status
from app.api.limits import BodySizeLimit
from app.api.routes import checkpoints as checkpoint_routes
from app.api.routes import datasets, events, openai, training, workers
from app.api.status_cache import StatusCache
from app.core import disk
from app.core.config import Settings, get_settings
from app.core.db import Database, unavailable
from app.core.errors import ForgeError
from app.run_folder import checkpoint_finder
from app.training_config import optimizer_names
from app.web import routes as web

log = logging.getLogger("forge.api")

DESCRIPTION = """
Fine-tune language models with Unsloth (4-bit QLoRA) from the Data Factory.

Submit a training config with `POST /api/training`; a separate GPU worker trains it and reports progress
here and in `.factory/training-status.json`. `GET /api/training` is the flat status object the Forge UI polls.
When the server has `FORGE_API_TOKEN`, send `Authorization: Bearer <token>` on every `/api` call.
"""


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    details = [
        {
            "param": _field(tuple(err.get("loc", ()))),
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{d['param']}: {d['message']}" for d in details[:10])
    more = f" (and {len(details) - 10} more)" if len(details) > 10 else ""
    return {
        "code": "invalid_request",
        "message": f"{len(details)} problem(s) in the request: {summary}{more}",
        "param": details[0]["param"] if details else None,
        "details": details,
    }


# What a client is told to wait before retrying while the database is locked by someone else.
RETRY_AFTER_SECONDS = 5


def _internal_error() -> JSONResponse:
    return JSONResponse(
        {"code": "internal_error", "message": "the server failed; see its log", "param": None}, status_code=500
    )


def _disk_full(request: Request) -> JSONResponse:
    log.error("%s %s: the disk is full", request.method, request.url.path)
    return JSONResponse(
        {
            "code": "disk_full",
            "message": "the server's disk is full, so it could not store what this request asked for; free space "
            "on the disk holding the project (FORGE_PROJECT_DIR) and retry. A POST may have been recorded before "
            "the write failed: look it up (GET /api/training/jobs) or retry with the same Idempotency-Key",
            "param": None,
        },
        status_code=507,
    )


async def _reap_lost_jobs(db: Database, settings: Settings) -> None:
    """Fail running jobs whose worker stopped renewing its lease, even when no worker is left to notice."""
    interval = min(5.0, settings.lease_seconds / 2)
    while True:
        await asyncio.sleep(interval)
        try:
            with db.session() as session:
                lost = await asyncio.to_thread(
                    jobs.expire_lost, session, checkpoint_of=checkpoint_finder(settings.runs_dir)
                )
            for job_id, status in lost:
                log.warning("job %s lost its worker; now %s", job_id, status.value)
            if lost:  # no worker may be left to update the status file
                with db.session() as session:
                    training_status.refresh_file(session, settings.status_file)
        except Exception:  # a locked database now is retried at the next tick
            log.exception("could not check for lost jobs")


async def _warm_up() -> None:
    # The optimizer names come from transformers (~4 s to import): loaded now, not by the first submission.
    await asyncio.to_thread(optimizer_names)
    # What is loaded by now (transformers, torch: millions of objects) lives as long as the process. Left out of
    # the collector's full passes, which otherwise stopped every thread, the event loop too, for ~0.6 s at a time
    # while a large upload was validated.
    gc.freeze()


def _allowed_methods(path: str) -> set[str]:
    methods: set[str] = set()
    for route in [
        *training.router.routes,
        *datasets.router.routes,
        *events.router.routes,
        *checkpoint_routes.router.routes,
        *openai.router.routes,
        *workers.router.routes,
    ]:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods or set()
    return methods


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db = Database(settings)
        app.state.status_cache = StatusCache(app.state.db)
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        reaper = asyncio.create_task(_reap_lost_jobs(app.state.db, settings))
        warm = asyncio.create_task(_warm_up())
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await warm
            app.state.status_cache.close()
            app.state.db.dispose()

    app = FastAPI(title="Forge Trainer", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings

    @app.exception_handler(ForgeError)
    async def forge_error(_: Request, exc: ForgeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400:
            message = "the request body could not be read: send UTF-8 JSON, or YAML with Content-Type: application/yaml"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers["Allow"] = ", ".join(sorted(_allowed_methods(request.url.path)))
        return JSONResponse(
            {"code": code, "message": message, "param": None}, status_code=exc.status_code, headers=headers
        )

    # The database and the disk fail for reasons outside the request: a lock held by another process (a backup,
    # a long query) or a full disk. Those get 503 (retry later) and 507, never 500.
    @app.exception_handler(DBAPIError)
    @app.exception_handler(sqlite3.DatabaseError)
    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        reason = unavailable(exc)
        if reason == "full":
            return _disk_full(request)
        if reason == "busy":
            cause = exc.orig if isinstance(exc, DBAPIError) else exc
            log.warning("%s %s: the database is busy (%s)", request.method, request.url.path, cause)
            return JSONResponse(
                {
                    "code": "database_busy",
                    "message": "the job database is locked by another process (a backup, a long query) or cannot "
                    f"be reached. Retry in {RETRY_AFTER_SECONDS} s",
                    "param": None,
                },
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        log.exception("unhandled database error")
        return _internal_error()

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        if disk.full(exc):
            return _disk_full(request)
        log.exception("unhandled error")
        return _internal_error()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _internal_error()

    app.include_router(training.router)
    app.include_router(workers.router)
    app.include_router(datasets.router)
    app.include_router(events.router)
    app.include_router(checkpoint_routes.router)
    app.include_router(openai.router)  # the OpenAI-compatible surface, under /v1
    web.install(app)  # the dashboard at `/`
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Idempotent-Replayed"],
        )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        uploads={datasets.router.prefix: settings.max_upload_bytes, openai.FILES_PATH: settings.max_upload_bytes},
    )
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory app.main:app_factory`."""
    return create_app()
