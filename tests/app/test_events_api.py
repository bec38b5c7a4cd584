"""Events written by the job transitions (app/jobs.py) and read by cursor through the API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app import jobs
from app.core.config import Settings
from app.main import create_app
from tests.app.test_api import SPEC_CONFIG


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_transitions_write_events_read_by_cursor(client: TestClient) -> None:
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    db = client.app.state.db  # type: ignore[attr-defined]
    with db.session() as session:
        job = jobs.claim_next(session, "w1", 60)
        assert job is not None and job.id == job_id
    assert client.post(f"/api/training/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    with db.session() as session:
        assert jobs.finish(session, jobs.get(session, job_id), jobs.JobStatus.cancelled)
        assert not jobs.finish(session, jobs.get(session, job_id), jobs.JobStatus.cancelled)  # not ours: no event

    everything = client.get(f"/api/training/jobs/{job_id}/events").json()
    kinds = [e["type"] for e in everything["items"]]
    assert kinds == ["queued", "started", "cancel_requested", "cancelled"]
    assert everything["has_more"] is False and everything["last_id"] == everything["items"][-1]["id"]
    started = everything["items"][1]
    assert started["data"] == {"attempt": 1, "worker_id": "w1", "resume_from": None}
    assert started["message"] == "started on worker w1 (attempt 1)"
    assert everything["items"][3]["data"] == {"status": "cancelled", "error_code": None, "error_message": None}

    first = client.get(f"/api/training/jobs/{job_id}/events", params={"limit": 3}).json()
    assert [e["type"] for e in first["items"]] == kinds[:3] and first["has_more"] is True
    rest = client.get(f"/api/training/jobs/{job_id}/events", params={"after": first["last_id"]}).json()
    assert [e["type"] for e in rest["items"]] == ["cancelled"] and rest["has_more"] is False

    # Another job's events are its own; a queued job cancelled at once is cancelled in the same write.
    other = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    client.post(f"/api/training/jobs/{other}/cancel")
    theirs = client.get(f"/api/training/jobs/{other}/events").json()["items"]
    assert [e["type"] for e in theirs] == ["queued", "cancel_requested", "cancelled"]
    assert min(e["id"] for e in theirs) > everything["last_id"]


def test_event_queries_are_checked(client: TestClient) -> None:
    assert client.get("/api/training/jobs/nope/events").status_code == 404
    assert client.get("/api/training/jobs/nope/checkpoints").status_code == 404
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    for params in ({"after": -1}, {"limit": 0}, {"limit": 5000}, {"cursor": 1}):
        response = client.get(f"/api/training/jobs/{job_id}/events", params=params)
        assert response.status_code == 422, params
    assert client.get(f"/api/training/jobs/{job_id}/checkpoints").json() == {"job_id": job_id, "items": []}
