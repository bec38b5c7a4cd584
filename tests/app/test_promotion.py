"""POST /api/training/jobs/{id}/promote and GET /api/training/accepted, on SQLite and on Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import jobs
from app.core.config import Settings
from app.main import create_app
from app.models import JobStatus
from tests.conftest import tiny_config


@pytest.fixture
def client(db_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(db_settings)) as client:
        yield client


def gates(**statuses: str) -> dict[str, Any]:
    """A gates report with these gates' statuses (metrics/gates.json's shape)."""
    listed = [{"name": name.replace("_", "-"), "status": s, "message": f"{name} {s}"} for name, s in statuses.items()]
    return {"passed": "failed" not in statuses.values(), "required": False, "metric": "token_f1", "gates": listed}


def finish_next(client: TestClient, status: JobStatus, result: dict[str, Any]) -> tuple[str, str | None]:
    """Play the worker: claim the oldest queued job and end it; the job's id and the accepted job it was given."""
    with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        job = jobs.claim_next(session, "test-worker", 60)
        assert job is not None
        assert jobs.finish(session, job, status, result=result)
        return job.id, job.accepted_job_id


def test_promote_refuses_what_cannot_be_accepted_and_records_who_when_why(
    client: TestClient, tiny_model_dir: Path
) -> None:
    config = tiny_config(tiny_model_dir)
    missing = client.post("/api/training/jobs/nope/promote")
    assert missing.status_code == 404 and missing.json()["param"] == "job_id"
    assert client.get("/api/training/accepted").json()["code"] == "no_accepted_model"

    queued = client.post("/api/training", json=config).json()["id"]
    refused = client.post(f"/api/training/jobs/{queued}/promote")
    assert refused.status_code == 409 and refused.json()["code"] == "not_succeeded"
    assert "queued" in refused.json()["message"]

    # A succeeded job with a failed gate (gates.required false) is refused, naming the gate.
    metrics = {"evaluation": {"examples": 8, "metrics": {"token_f1": 0.4}}}
    failing, compared = finish_next(
        client,
        JobStatus.succeeded,
        {**metrics, "gates": gates(model_performance="failed", loss_converged="passed", no_regression="not_run")},
    )
    assert compared is None  # nothing was accepted when it started
    refused = client.post(f"/api/training/jobs/{failing}/promote", json={"note": "looks fine"})
    body = refused.json()
    assert refused.status_code == 409 and body["code"] == "gate_failed"
    assert "model-performance" in body["message"] and "loss-converged" not in body["message"]
    assert [d["param"] for d in body["details"]] == ["model-performance"]

    client.post("/api/training", json=config)
    good, _ = finish_next(client, JobStatus.succeeded, {**metrics, "gates": gates(model_performance="passed")})
    assert client.post(f"/api/training/jobs/{good}/promote", json={"nope": 1}).status_code == 422
    promoted = client.post(f"/api/training/jobs/{good}/promote", json={"note": "beats v1 on money", "by": "ama"})
    assert promoted.status_code == 200, promoted.text
    accepted = client.get("/api/training/accepted").json()
    assert accepted == promoted.json()
    assert (accepted["job_id"], accepted["promoted_by"], accepted["note"]) == (good, "ama", "beats v1 on money")
    assert accepted["metrics"] == {"token_f1": 0.4} and accepted["gates"]["gates"][0]["status"] == "passed"
    assert accepted["promoted_at"]

    # The next job is claimed against the accepted model; a later promotion (no body needed) replaces it.
    client.post("/api/training", json=config)
    later, compared = finish_next(client, JobStatus.succeeded, {"gates": gates(no_regression="passed")})
    assert compared == good
    assert client.get(f"/api/training/jobs/{later}").json()["accepted_job_id"] == good
    assert client.post(f"/api/training/jobs/{later}/promote").status_code == 200
    assert client.get("/api/training/accepted").json()["job_id"] == later

    # A failed job is refused as not succeeded.
    client.post("/api/training", json=config)
    crashed, _ = finish_next(client, JobStatus.failed, {})
    assert client.post(f"/api/training/jobs/{crashed}/promote").json()["code"] == "not_succeeded"
