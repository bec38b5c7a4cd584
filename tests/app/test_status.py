"""The flat status object: epoch counting and the atomic status file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app import status
from app.core.config import Settings
from app.core.db import make_engine
from app.models import Job, JobStatus
from app.training_config import TrainingConfig
from tests.e2e.conftest import wait_for


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


def test_polled_status_follows_writes_from_other_connections(db_settings: Settings) -> None:
    """GET /api/training is served from memory, yet shows a worker's write (another connection) at once: on
    SQLite by PRAGMA data_version, on Postgres by the job table's NOTIFY (delivered within milliseconds)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(db_settings)) as client:
        created = client.post("/api/training", json={"training": {"max_steps": 50}}).json()
        assert client.get("/api/training").json()["step"] == 0
        assert client.get(f"/api/training/jobs/{created['id']}").json()["step"] == 0
        # What a worker process does: its own connection, its own commit.
        engine = make_engine(db_settings.sqlalchemy_url)
        with engine.begin() as other:
            other.execute(
                text("UPDATE job SET status = 'running', step = 7, loss = 1.25 WHERE id = :id"), {"id": created["id"]}
            )
        engine.dispose()
        if db_settings.database_url is not None:  # the notification travels to the API's listening thread
            wait_for(lambda: client.get("/api/training").json()["step"] == 7, 2, "the notified change", 0.01)
        for _ in range(3):  # repeated polls keep answering the new state
            now = client.get("/api/training").json()
            assert (now["step"], now["loss"], now["running"]) == (7, 1.25, True)
            assert client.get(f"/api/training/jobs/{created['id']}").json()["step"] == 7
        assert client.get("/api/training/jobs/0123456789abcdef").status_code == 404


def test_postgres_status_is_cached_between_changes(postgres_url: str, settings: Settings) -> None:
    """On Postgres, polls between two changes cost no query: the cached bytes are served as they are."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings.model_copy(update={"database_url": postgres_url}))) as client:
        client.post("/api/training", json={"training": {"max_steps": 50}})
        cache = client.app.state.status_cache  # type: ignore[attr-defined]
        wait_for(lambda: cache._changes.version is not None, 5, "the cache to listen", 0.01)
        time.sleep(0.3)  # let the POST's own notification arrive
        first = cache.status()
        assert cache.status() is first  # the same object: nothing was queried again
