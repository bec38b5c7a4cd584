"""Training checkpoints in a job's run folder: which one is complete enough to resume from."""

from __future__ import annotations

import re
from pathlib import Path

from app.models import Job

# What Trainer writes for a resumable LoRA checkpoint; trainer_state.json comes last.
_REQUIRED = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
_NAME = re.compile(r"^checkpoint-(\d+)$")


def latest_complete(folder: Path) -> Path | None:
    """The newest checkpoint-N folder holding everything a resume needs, or None."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and all((child / name).is_file() for name in _REQUIRED):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def in_run(run_dir: Path, output_dir: str) -> str | None:
    """The newest complete checkpoint under a run folder's output_dir, relative to the run folder."""
    latest = latest_complete(run_dir / output_dir)
    return latest.relative_to(run_dir).as_posix() if latest else None


def for_job(runs_dir: Path, job: Job) -> str | None:
    """The job's newest complete checkpoint, relative to its run folder."""
    return in_run(runs_dir / job.id, job.config["training"]["output_dir"])
