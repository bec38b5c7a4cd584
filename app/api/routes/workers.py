"""/api/training/workers: the worker processes registered with the queue, on every host."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends

from app import workers
from app.api.deps import SessionDep, SettingsDep, error_responses, require_token
from app.api.schemas import WorkerList, WorkerRead
from app.models import utcnow

router = APIRouter(
    prefix="/api/training/workers",
    tags=["workers"],
    dependencies=[Depends(require_token)],
    responses=error_responses(e401="No token, or a wrong one (when the server has FORGE_API_TOKEN)"),
)


@router.get("", response_model=WorkerList, summary="List the workers: host, GPUs, current job, last heartbeat")
def list_workers(session: SessionDep, settings: SettingsDep) -> WorkerList:
    alive_since = utcnow() - timedelta(seconds=settings.lease_seconds)
    return WorkerList(
        items=[
            WorkerRead(
                id=record.id,
                host=record.host,
                pid=record.pid,
                gpus=record.gpus,
                current_job_id=job_id,
                started_at=record.started_at,
                last_heartbeat_at=record.heartbeat_at,
                alive=record.heartbeat_at >= alive_since,
            )
            for record, job_id in workers.listing(session)
        ]
    )
