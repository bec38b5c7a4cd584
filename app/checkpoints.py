"""Training checkpoints in a job's run folder: which one is complete enough to resume from."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic import Field as PydanticField

# What Trainer writes for a resumable LoRA checkpoint; trainer_state.json comes last.
_REQUIRED = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
_NAME = re.compile(r"^checkpoint-(\d+)$")


def is_complete(checkpoint: Path) -> bool:
    """Whether a checkpoint folder holds everything a resume needs."""
    return checkpoint.is_dir() and all((checkpoint / name).is_file() for name in _REQUIRED)


def latest_complete(folder: Path) -> Path | None:
    """The newest checkpoint-N folder holding everything a resume needs, or None."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _NAME.match(child.name)
        if match and is_complete(child):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


class CheckpointRead(BaseModel):
    """One training checkpoint, with the metrics its trainer_state.json recorded."""

    name: str = PydanticField(description="The folder, e.g. checkpoint-40.")
    path: str = PydanticField(description="Inside the job's run folder; also the prefix of its artifacts.")
    step: int
    epoch: float | None = PydanticField(description="Fractional epochs done at this step.")
    train_loss: float | None = PydanticField(description="The last training loss logged up to this step.")
    eval_loss: float | None = PydanticField(description="The last validation loss up to this step, if computed.")
    bytes: int = PydanticField(description="All of the folder's files.")
    complete: bool = PydanticField(
        description="Holds everything a resume needs (weights, optimizer, scheduler, state)."
    )
    created_at: datetime = PydanticField(description="When its trainer_state.json (written last) was written.")
    score: float | None = PydanticField(
        default=None, description="training.select_checkpoint best: its gates.metric on the validation split."
    )
    picked: bool = PydanticField(default=False, description="The best-scored so far: the one saved as the LoRA.")


class CheckpointList(BaseModel):
    job_id: str
    items: list[CheckpointRead] = PydanticField(description="Oldest first.")


def _last(history: list[dict[str, Any]], key: str, step: int) -> float | None:
    values = [e[key] for e in history if key in e and int(e.get("step", 0)) <= step]
    return float(values[-1]) if values and isinstance(values[-1], int | float) else None


def _scores(report: Path | None) -> tuple[dict[int, float | None], int | None]:
    """metrics/checkpoints.json: each scored step's score, and the step picked."""
    try:
        kept = json.loads(report.read_text()) if report is not None and report.is_file() else {}
    except (OSError, ValueError):
        kept = {}  # being written
    return {int(c["step"]): c.get("score") for c in kept.get("checkpoints", [])}, kept.get("picked_step")


def listing(run_dir: Path, folder: Path, report: Path | None = None) -> list[CheckpointRead]:
    """Every checkpoint-N folder in `folder` (a job's output_dir inside `run_dir`), oldest first, with its score
    from `report` (metrics/checkpoints.json) when select_checkpoint scored it."""
    if not folder.is_dir():
        return []
    scores, picked = _scores(report)
    found = []
    for child in folder.iterdir():
        match = _NAME.match(child.name)
        if not (match and child.is_dir() and not child.is_symlink()):
            continue
        step = int(match.group(1))
        state_file = child / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}  # still being written, or cut short: listed, not complete
        history = state.get("log_history") if isinstance(state.get("log_history"), list) else []
        files = [p for p in child.rglob("*") if p.is_file() and not p.is_symlink()]
        newest = state_file if state_file.is_file() else child
        found.append(
            CheckpointRead(
                name=child.name,
                path=child.relative_to(run_dir).as_posix(),
                step=step,
                epoch=float(state["epoch"]) if isinstance(state.get("epoch"), int | float) else None,
                train_loss=_last(history, "loss", step),
                eval_loss=_last(history, "eval_loss", step),
                bytes=sum(p.stat().st_size for p in files),
                complete=bool(state) and is_complete(child),
                created_at=datetime.fromtimestamp(newest.stat().st_mtime, UTC),
                score=scores.get(step),
                picked=step == picked,
            )
        )
    return sorted(found, key=lambda c: c.step)
