"""What the route modules share: request dependencies (database session, settings, bearer-token auth), the
submission check of a config, and the OpenAPI description of error responses."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from app import weights
from app.api.schemas import ErrorBody
from app.api.status_cache import StatusCache
from app.core.config import Settings
from app.core.db import Database
from app.core.errors import Unauthorized
from app.datasets import job_data
from app.resolve import Resolved, resolve
from app.training_config import TrainingConfig


def error_responses(**codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error codes given as e404="why", all in the one error shape."""
    return {int(code.removeprefix("e")): {"model": ErrorBody, "description": text} for code, text in codes.items()}


_bearer = HTTPBearer(auto_error=False, description="Set when the server has FORGE_API_TOKEN.")


# The cheap dependencies are `async`: a sync one would cost every request a hop to the thread pool.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_status_cache(request: Request) -> StatusCache:
    cache: StatusCache = request.app.state.status_cache
    return cache


def get_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    with db.session() as session:
        yield session


def check_token(settings: Settings, authorization: str | None) -> None:
    """401 unless `authorization` is `Bearer <one of the tokens>` (or the server has none)."""
    tokens = settings.tokens
    if not tokens:
        return
    scheme, _, credentials = (authorization or "").partition(" ")
    given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
    # Compare against every token, each in constant time, so timing tells nothing about which was close.
    matches = [hmac.compare_digest(given, token) for token in tokens]
    if not any(matches):
        raise Unauthorized(
            "missing or wrong API token; send the header `Authorization: Bearer <FORGE_API_TOKEN>`",
            param="Authorization",
        )


async def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    # Checked before the body is read, by app.api.yaml_body; here too, so the OpenAPI page shows the scheme.
    check_token(settings, f"Bearer {credentials.credentials}" if credentials else None)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
StatusCacheDep = Annotated[StatusCache, Depends(get_status_cache)]


def resolve_config(settings: Settings, config: TrainingConfig) -> Resolved:
    """The files and model a config names, by the worker's own rules (422 naming the key at fault)."""
    return resolve(config, project=settings.resolved_project_dir, model_dirs=settings.model_dirs)


def resolve_and_validate(settings: Settings, config: TrainingConfig) -> Resolved:
    """What a submission checks before a GPU minute is spent: every file there, every row of the data valid."""
    resolved = resolve_config(settings, config)
    model = resolved.model
    # A local or the embedded model: its module names are known without loading it.
    if model.kind == "embedded":
        weights.check_target_modules(config, weights.EMBEDDED_MODULES)
    elif model.folder is not None:
        weights.check_target_modules(config, weights.module_names(model.folder))
    evaluation = config.evaluation
    if resolved.test is not None and (evaluation.baseline or evaluation.evaluate):
        job_data.test_split(resolved.test, resolved.shown(resolved.test), evaluation.terms_field)
    report = job_data.validate(config, resolved, settings.cache_dir).report
    if not report.ok:
        raise job_data.as_error(report)
    return resolved
