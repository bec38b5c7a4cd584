"""/api/training/jobs/{id}/events: a job's events by cursor, and as a Server-Sent Events stream.

The stream polls the database off the event loop (a thread per poll, every POLL_SECONDS), so a slow query or a
locked database never stalls other requests; it replays from `Last-Event-ID` (or `after`) and ends once the
job's terminal event has been sent.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError

from app import events, jobs
from app.api.deps import DbDep, SessionDep, SettingsDep, require_token
from app.api.schemas import ErrorBody
from app.core.db import Database, unavailable
from app.core.errors import InvalidInput
from app.events import EventPage, EventRead
from app.models import TERMINAL_STATUSES

router = APIRouter(
    prefix="/api/training/jobs",
    tags=["events"],
    dependencies=[Depends(require_token)],
    responses={
        401: {"model": ErrorBody, "description": "No token, or a wrong one (when the server has FORGE_API_TOKEN)"},
        422: {"model": ErrorBody, "description": "Invalid input; each problem is named in `details`"},
    },
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such job"}}

# How often a stream looks for new events; the worker writes at most twice a second.
POLL_SECONDS = 0.25
STREAM_BATCH = 500


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(default=0, ge=0, le=2**63 - 1, description="Only events with a larger id (a cursor).")
    limit: int = Field(default=100, ge=1, le=1000, description="Events per page.")


@router.get("/{job_id}/events", response_model=EventPage, summary="A job's events, oldest first", responses=NOT_FOUND)
def list_events(job_id: str, session: SessionDep, query: Annotated[EventQuery, Query()]) -> EventPage:
    """Page through with `after` = the `last_id` of the previous page while `has_more` is true."""
    jobs.get(session, job_id)
    rows, more = events.after(session, job_id, query.after, query.limit)
    return EventPage(job_id=job_id, items=events.read(rows), has_more=more, last_id=rows[-1].id if rows else None)


def _cursor(last_event_id: str | None, after: int) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after
    try:
        value = int(last_event_id)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise InvalidInput(
            f"Last-Event-ID {last_event_id!r} is not an event id; send the `id:` of the last event received",
            code="invalid_event_id",
            param="Last-Event-ID",
        )
    return value


def _poll(db: Database, job_id: str, cursor: int) -> tuple[list[EventRead], bool]:
    """New events, and whether the job had ended before they were read (then nothing more will come)."""
    with db.session() as session:
        # Status first: the terminal event commits with the terminal status, so it is among the rows read next.
        ended = jobs.get(session, job_id).status in TERMINAL_STATUSES
        rows, _ = events.after(session, job_id, cursor, STREAM_BATCH)
        return events.read(rows), ended


def _frame(event: EventRead) -> str:
    return f"id: {event.id}\nevent: {event.type.value}\ndata: {event.model_dump_json()}\n\n"


async def _stream(request: Request, db: Database, job_id: str, cursor: int, keepalive: float) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"  # a browser's EventSource reconnects after a second, with Last-Event-ID
    last_sent = time.monotonic()
    while True:
        try:
            found, ended = await asyncio.to_thread(_poll, db, job_id, cursor)
        except (DBAPIError, sqlite3.DatabaseError) as exc:
            if unavailable(exc) is None:
                raise
            found, ended = [], False  # the database is locked or away for now: the stream waits, it does not end
        for event in found:
            yield _frame(event)
            cursor = event.id
        if ended and len(found) < STREAM_BATCH:
            return
        if found:
            last_sent = time.monotonic()
        if time.monotonic() - last_sent >= keepalive:
            yield ": keep-alive\n\n"  # a comment: proxies and clients see the connection is alive
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)


@router.get(
    "/{job_id}/events/stream",
    summary="A job's events as Server-Sent Events, live",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **NOT_FOUND},
)
def stream_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    db: DbDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="Start after this event id.")] = 0,
    last_event_id: Annotated[
        str | None, Header(max_length=32, description="Sent by a reconnecting client: replay what came after it.")
    ] = None,
) -> StreamingResponse:
    """Each event is `id: <id>`, `event: <type>`, `data: <the event as JSON>`. A comment (`: keep-alive`) is sent
    when nothing happened for FORGE_EVENTS_KEEPALIVE_SECONDS. The stream ends after the job's terminal event
    (succeeded, failed or cancelled); reconnect with `Last-Event-ID` to get exactly what was missed."""
    jobs.get(session, job_id)
    cursor = _cursor(last_event_id, after)
    body = _stream(request, db, job_id, cursor, settings.events_keepalive_seconds)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        # No caching, and no buffering by nginx-style proxies: each event goes out as it happens.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
