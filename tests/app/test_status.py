"""The flat status object: epoch counting and the atomic status file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import status
from app.models import Job, JobStatus
from app.training_config import TrainingConfig


@pytest.mark.parametrize(
    ("step", "epoch", "shown"), [(0, 0.0, 0), (1, 0.01, 1), (45, 1.35, 2), (100, 3.0, 3), (33, 1.0, 1)]
)
def test_epoch_counts_from_one(step: int, epoch: float, shown: int) -> None:
    job = Job(config=TrainingConfig().model_dump(), status=JobStatus.running, step=step, epoch=epoch, total_epochs=3)
    view = status.of_job(job)
    assert (view.epoch, view.total_epochs, view.running) == (shown, 3, True)


def test_status_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / ".factory" / "training-status.json"
    status.write_file(path, status.idle())
    assert json.loads(path.read_text())["running"] is False
    job = Job(config=TrainingConfig().model_dump(), status=JobStatus.failed, error_code="x", error_message="boom")
    status.write_file(path, status.of_job(job))
    assert json.loads(path.read_text())["error"] == "boom"
    assert [p.name for p in path.parent.iterdir()] == ["training-status.json"]  # no temp files left
