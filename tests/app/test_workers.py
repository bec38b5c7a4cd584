"""The worker registry and GET /api/training/workers, on SQLite and Postgres; the worker's start-up checks."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from app import jobs, workers
from app.core.config import Settings
from app.core.db import Database
from app.models import WorkerRecord, utcnow
from app.training_config import TrainingConfig
from tests.conftest import ROOT, tiny_config


def test_workers_are_listed_with_gpus_current_job_and_heartbeat(db_settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    db = Database(db_settings)
    with db.session() as session:
        workers.register(session, "gpu-box-1:101", [0, 1])
        workers.register(session, "gpu-box-2:202", [])
        jobs.create(session, TrainingConfig())
        job = jobs.claim_next(session, "gpu-box-1:101", 60)
        assert job is not None
        # gpu-box-2 was killed a while ago: still listed, no longer alive.
        session.execute(
            update(WorkerRecord)
            .where(WorkerRecord.id == "gpu-box-2:202")  # type: ignore[arg-type]
            .values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )
        session.commit()
    with TestClient(create_app(db_settings)) as client:
        listed = {w["id"]: w for w in client.get("/api/training/workers").json()["items"]}
    assert set(listed) == {"gpu-box-1:101", "gpu-box-2:202"}
    busy, gone = listed["gpu-box-1:101"], listed["gpu-box-2:202"]
    assert (busy["gpus"], busy["current_job_id"], busy["alive"], busy["pid"]) == ([0, 1], job.id, True, os.getpid())
    assert (gone["gpus"], gone["current_job_id"], gone["alive"]) == ([], None, False)
    assert busy["host"] and busy["last_heartbeat_at"] and busy["started_at"]
    with db.session() as session:
        workers.leave(session, "gpu-box-1:101")
        assert [r.id for r, _ in workers.listing(session)] == ["gpu-box-2:202"]


@pytest.mark.parametrize(("given", "gpus"), [("0,1", [0, 1]), ("3", [3]), ("", []), ("[2, 5]", [2, 5])])
def test_worker_gpus_are_read_as_cuda_visible_devices_writes_them(given: str, gpus: list[int]) -> None:
    os.environ["FORGE_WORKER_GPUS"] = given
    try:
        assert Settings().worker_gpus == gpus
    finally:
        del os.environ["FORGE_WORKER_GPUS"]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert workers.visible_gpus() == [1, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert workers.visible_gpus() == []


def test_a_worker_that_cannot_write_run_folders_refuses_to_start(project: Path) -> None:
    (project / "runs").write_text("not a folder")  # what a read-only or unmounted share looks like to root
    env = dict(os.environ, FORGE_PROJECT_DIR=str(project))
    result = subprocess.run(
        [sys.executable, "-m", "worker", "--exit-when-idle"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert f"the worker cannot write run folders in {project / 'runs'}" in result.stderr
    assert "filesystem all the workers' hosts share" in result.stderr
    assert not (project / ".factory" / "forge.db").exists()  # refused before touching the queue


def test_a_job_asking_for_more_gpus_than_any_worker_has_is_refused(db_settings: Settings, tiny_model_dir: Path) -> None:
    """training.num_gpus over the most GPUs of a registered worker: a 422 at submission, not a job that waits
    forever; with no worker registered yet the job is queued (a worker may come)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    def submit(client: TestClient, num_gpus: int | str) -> Any:
        return client.post(
            "/api/training", json=tiny_config(tiny_model_dir, num_gpus=num_gpus, gradient_accumulation_steps=4)
        )

    with TestClient(create_app(db_settings)) as client:
        assert submit(client, 4).status_code == 201  # no worker yet: it waits for one
        with Database(db_settings).session() as session:
            workers.register(session, "gpu-box-1:101", [0, 1])
            workers.register(session, "cpu-box:202", [])
        refused = submit(client, 4)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert (body["code"], body["param"]) == ("not_enough_gpus", "training.num_gpus")
        assert "2" in body["message"]
        assert submit(client, 2).status_code == 201
        assert submit(client, "all").status_code == 201
