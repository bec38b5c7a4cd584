"""Idempotent job creation, body limits, several tokens, CORS and resume, against a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app import jobs
from app.core.config import Settings
from app.main import create_app
from app.models import JobStatus
from tests.app.test_api import SPEC_CONFIG


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    first = client.post("/api/training", json=SPEC_CONFIG, headers={"Idempotency-Key": "run-42"})
    retry = client.post("/api/training", json=SPEC_CONFIG, headers={"Idempotency-Key": "run-42"})
    assert first.status_code == retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert retry.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    other = SPEC_CONFIG | {"training": {"max_steps": 5}}
    reused = client.post("/api/training", json=other, headers={"Idempotency-Key": "run-42"})
    assert reused.status_code == 409 and reused.json()["code"] == "idempotency_key_reused"
    fresh = client.post("/api/training", json=SPEC_CONFIG)
    assert fresh.json()["id"] != first.json()["id"]
    assert client.get("/api/training/jobs").json()["total"] == 2


def test_oversized_bodies_are_413(client: TestClient, settings: Settings) -> None:
    big = b'{"model": {"name": "' + b"x" * (settings.max_request_bytes + 1) + b'"}}'
    response = client.post("/api/training", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"model": {"name": "'
        for _ in range(settings.max_request_bytes // 4096 + 1):
            yield b"x" * 4096
        yield b'"}}'

    response = client.post("/api/training", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert client.get("/api/training/jobs").json()["total"] == 0


def test_any_of_several_tokens_is_accepted_and_none_is_stored(settings: Settings) -> None:
    settings.api_token = SecretStr("first-token")
    settings.api_tokens = [SecretStr("second-token")]
    with TestClient(create_app(settings)) as client:
        for i, token in enumerate(("first-token", "second-token")):
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"key-{i}"}
            assert client.post("/api/training", json=SPEC_CONFIG, headers=headers).status_code == 201
        assert client.get("/api/training", headers={"Authorization": "Bearer third"}).status_code == 401
    stored = b"".join(p.read_bytes() for p in (settings.resolved_project_dir / ".factory").iterdir() if p.is_file())
    assert b"first-token" not in stored and b"second-token" not in stored


def test_cors_allows_only_the_configured_origin(settings: Settings) -> None:
    settings.cors_origins = ["http://localhost:5173"]
    with TestClient(create_app(settings)) as client:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        ok = client.options("/api/training", headers={"Origin": "http://localhost:5173", **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:5173"
        other = client.options("/api/training", headers={"Origin": "http://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
        polled = client.get("/api/training", headers={"Origin": "http://localhost:5173"})
        assert polled.headers["access-control-allow-origin"] == "http://localhost:5173"


def _fake_checkpoint(run: Path, step: int) -> None:
    folder = run / "outputs" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (folder / name).write_bytes(b"x")


def test_resume_requeues_a_lost_job_from_its_newest_complete_checkpoint(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    assert client.post(f"/api/training/jobs/{job_id}/resume").json()["code"] == "not_resumable"
    db = client.app.state.db  # type: ignore[attr-defined]
    with db.session() as session:
        job = jobs.claim_next(session, "w1", 60)
        assert job is not None
        assert jobs.finish(session, job, JobStatus.failed, error_code="worker_lost", error_message="gone")
    response = client.post(f"/api/training/jobs/{job_id}/resume")
    assert response.status_code == 409 and response.json()["code"] == "no_checkpoint"

    run = settings.runs_dir / job_id
    _fake_checkpoint(run, 4)
    _fake_checkpoint(run, 8)
    (run / "outputs" / "checkpoint-12").mkdir()  # incomplete: never resumed from
    resumed = client.post(f"/api/training/jobs/{job_id}/resume").json()
    assert resumed["status"] == "queued" and resumed["resume_from"] == "outputs/checkpoint-8"
    assert resumed["error"] is None
    with db.session() as session:
        again = jobs.claim_next(session, "w2", 60)
    assert again is not None and again.attempt == 2 and again.resume_from == "outputs/checkpoint-8"


def test_a_finished_job_cannot_be_resumed(client: TestClient) -> None:
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    client.post(f"/api/training/jobs/{job_id}/cancel")
    response = client.post(f"/api/training/jobs/{job_id}/resume")
    assert response.status_code == 409 and "cancelled" in response.json()["message"]


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"model": {"name": "~nosuchuser0/gemma"}}, "model.name"),
        ({"dataset": {"path": "~nosuchuser0/train.jsonl"}}, "dataset.path"),
    ],
)
def test_a_home_of_no_user_is_a_path_not_found(client: TestClient, patch: dict, param: str) -> None:
    """`~name` for a user that does not exist cannot be expanded: the path is refused like any missing one (the
    fuzz found it answered 500)."""
    response = client.post("/api/training", json=SPEC_CONFIG | patch)
    assert response.status_code == 422, response.text
    assert response.json()["param"] == param and "~nosuchuser0" in response.json()["message"]
    upload = client.post(
        "/api/training/datasets",
        files={"file": ("rows.jsonl", b"{}\n")},
        data={"model": "~nosuchuser0", "chat_template": "gemma-3"},
    )
    assert upload.status_code < 500, upload.text


def test_resume_can_name_a_checkpoint(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    db = client.app.state.db  # type: ignore[attr-defined]
    with db.session() as session:
        job = jobs.claim_next(session, "w1", 60)
        assert job is not None
        assert jobs.finish(session, job, JobStatus.failed, error_code="worker_lost", error_message="gone")
    run = settings.runs_dir / job_id
    _fake_checkpoint(run, 4)
    _fake_checkpoint(run, 8)
    (run / "outputs" / "checkpoint-12").mkdir()  # incomplete
    for name in ("checkpoint-12", "checkpoint-99"):
        refused = client.post(f"/api/training/jobs/{job_id}/resume", json={"checkpoint": name})
        assert refused.status_code == 422 and refused.json()["param"] == "checkpoint", refused.text
        assert name in refused.json()["message"]
    escaping = client.post(f"/api/training/jobs/{job_id}/resume", json={"checkpoint": "../../etc"})
    assert escaping.status_code == 422 and escaping.json()["details"][0]["param"] == "checkpoint"
    resumed = client.post(f"/api/training/jobs/{job_id}/resume", json={"checkpoint": "checkpoint-4"}).json()
    assert resumed["status"] == "queued" and resumed["resume_from"] == "outputs/checkpoint-4"
