"""Request dependencies: the database session and bearer-token auth."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from app.core.config import Settings
from app.core.db import Database
from app.core.errors import Unauthorized
from app.status import StatusCache

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


async def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    tokens = settings.tokens
    if not tokens:
        return
    given = credentials.credentials.encode() if credentials else b""
    # Compare against every token, each in constant time, so timing tells nothing about which was close.
    matches = [hmac.compare_digest(given, token) for token in tokens]
    if not any(matches):
        raise Unauthorized(
            "missing or wrong API token; send the header `Authorization: Bearer <FORGE_API_TOKEN>`",
            param="Authorization",
        )


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
StatusCacheDep = Annotated[StatusCache, Depends(get_status_cache)]
