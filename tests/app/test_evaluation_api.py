"""The API side of evaluation and gates: files checked before queueing, gates and progress shown from the result."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import status
from app.api.schemas import JobRead
from app.core.config import Settings
from app.main import create_app
from app.models import Job, JobPhase, JobStatus
from app.training_config import TrainingConfig
from tests.conftest import tiny_config


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_missing_test_split_is_422_unless_evaluation_is_off(client: TestClient, project: Path, tiny_model_dir: Path):
    (project / "data" / "splits" / "test.jsonl").unlink()
    response = client.post("/api/training", json=tiny_config(tiny_model_dir))
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "test_set_not_found" and body["param"] == "evaluation.test_path"
    assert "evaluation.baseline and evaluation.evaluate to false" in body["message"]
    off = tiny_config(tiny_model_dir) | {"evaluation": {"baseline": False, "evaluate": False}}
    assert client.post("/api/training", json=off).status_code == 201


def test_glossary_must_exist_inside_the_project(client: TestClient, tiny_model_dir: Path) -> None:
    missing = tiny_config(tiny_model_dir) | {"evaluation": {"glossary_path": "data/nope.json"}}
    response = client.post("/api/training", json=missing)
    assert response.status_code == 422 and response.json()["code"] == "glossary_not_found"
    outside = tiny_config(tiny_model_dir) | {"evaluation": {"glossary_path": "../../etc/passwd"}}
    response = client.post("/api/training", json=outside)
    assert response.status_code == 422 and response.json()["code"] == "path_outside_project"
    present = tiny_config(tiny_model_dir) | {"evaluation": {"glossary_path": "data/glossary.json"}}
    assert client.post("/api/training", json=present).status_code == 201


GATES = {
    "passed": False,
    "required": False,
    "metric": "exact_match",
    "gates": [
        {"name": "baseline-established", "status": "passed", "message": "ok", "details": {"value": 0.0}},
        {"name": "model-performance", "status": "failed", "message": "0.1 vs 0.0", "details": {}},
        {"name": "loss-converged", "status": "passed", "message": "fell", "details": {}},
        {"name": "quantization-verified", "status": "not_run", "message": "no GGUF", "details": {}},
    ],
}


def test_job_and_status_show_gates_and_evaluation_progress() -> None:
    running = Job(
        config=TrainingConfig().model_dump(),
        status=JobStatus.running,
        phase=JobPhase.evaluate,
        result={"evaluation_progress": {"stage": "evaluate", "done": 16, "total": 40}},
    )
    view = status.of_job(running)
    assert view.phase == "evaluate" and view.evaluation is not None
    assert (view.evaluation.stage, view.evaluation.done, view.evaluation.total) == ("evaluate", 16, 40)
    assert view.gates is None

    running.status, running.phase = JobStatus.succeeded, JobPhase.done
    running.result = {"gates": GATES, "evaluation_progress": {"stage": "evaluate", "done": 40, "total": 40}}
    job = JobRead.from_job(running)
    assert job.gates is not None and job.gates.model_dump(mode="json") == GATES
    assert status.of_job(running).model_dump(mode="json")["gates"] == GATES
