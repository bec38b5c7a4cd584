"""/api/training/jobs/{id}/checkpoints: a job's training checkpoints with their metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app import checkpoints, jobs
from app.api.deps import SessionDep, SettingsDep, require_token
from app.api.schemas import ErrorBody
from app.checkpoints import CheckpointList
from app.run_folder import RunFolder

router = APIRouter(
    prefix="/api/training/jobs",
    tags=["checkpoints"],
    dependencies=[Depends(require_token)],
    responses={
        401: {"model": ErrorBody, "description": "No token, or a wrong one (when the server has FORGE_API_TOKEN)"}
    },
)


@router.get(
    "/{job_id}/checkpoints",
    response_model=CheckpointList,
    summary="A job's training checkpoints",
    responses={404: {"model": ErrorBody, "description": "No such job"}},
)
def list_checkpoints(job_id: str, session: SessionDep, settings: SettingsDep) -> CheckpointList:
    """Each checkpoint-N folder in training.output_dir (every training.save_steps; save_total_limit are kept):
    its step, epoch, the train and validation loss logged up to it, its size, and whether it is complete enough
    to resume from, and with training.select_checkpoint best its validation score and whether it is the one
    picked. Download its files from .../artifacts/<path>/..."""
    job = jobs.get(session, job_id)
    run = RunFolder.of(settings.runs_dir, job)
    return CheckpointList(job_id=job.id, items=checkpoints.listing(run.root, run.output_dir, run.checkpoints_report))
