"""POST /api/training/jobs/{id}/exports: a finished job's adapters exported again, as a job of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import jobs
from app.core.config import Settings
from app.main import create_app
from app.models import JobStatus
from tests.conftest import tiny_config


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _finish_next(client: TestClient, status: JobStatus = JobStatus.succeeded) -> str:
    """Play the worker: claim the oldest queued job and end it."""
    with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        job = jobs.claim_next(session, "test-worker", 60)
        assert job is not None
        assert jobs.finish(session, job, status, result={"steps": 4})
        return job.id


def _with_adapters(settings: Settings, job_id: str) -> None:
    lora = settings.runs_dir / job_id / "models" / "checkpoints" / "lora"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text("{}")


def test_export_of_a_succeeded_job_is_a_queued_export_job(
    client: TestClient, settings: Settings, tiny_model_dir: Path
) -> None:
    source = client.post("/api/training", json=tiny_config(tiny_model_dir)).json()
    _finish_next(client)
    _with_adapters(settings, source["id"])

    request = {"gguf_quantization": ["q4_k_m", "Q5_K_M"], "max_gguf_bytes": 10**9}
    response = client.post(f"/api/training/jobs/{source['id']}/exports", json=request)
    assert response.status_code == 201, response.text
    export = response.json()
    assert (export["kind"], export["source_job_id"], export["status"]) == ("export", source["id"], "queued")
    # The source's model and adapters, the requested formats; nothing about training changes.
    assert export["config"]["model"] == source["config"]["model"]
    assert export["config"]["save"] == {
        "lora_path": source["config"]["save"]["lora_path"],
        "merged_path": None,
        "gguf_path": "models/quantized",
        "gguf_quantization": ["Q4_K_M", "Q5_K_M"],
        "max_gguf_bytes": 10**9,
    }
    status = client.get("/api/training").json()
    assert (status["job_id"], status["kind"], status["phase"]) == (export["id"], "export", "queued")

    # A retry with the same Idempotency-Key is the same job; the key with another request is a conflict.
    headers = {"Idempotency-Key": "export-1"}
    first = client.post(f"/api/training/jobs/{source['id']}/exports", json=request, headers=headers)
    again = client.post(f"/api/training/jobs/{source['id']}/exports", json=request, headers=headers)
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["id"] == first.json()["id"] != export["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    url = f"/api/training/jobs/{source['id']}/exports"
    other = client.post(url, json={"gguf_quantization": "f16"}, headers=headers)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"


def test_exports_that_cannot_run_are_refused_with_the_reason(
    client: TestClient, settings: Settings, tiny_model_dir: Path
) -> None:
    assert client.post("/api/training/jobs/nope/exports", json={}).status_code == 404

    queued = client.post("/api/training", json=tiny_config(tiny_model_dir)).json()["id"]
    refused = client.post(f"/api/training/jobs/{queued}/exports", json={})
    assert refused.status_code == 409 and refused.json()["code"] == "job_not_finished"
    assert "queued" in refused.json()["message"]

    # Failed (in its own export, say): its adapters can still be exported, once they are there.
    assert _finish_next(client, JobStatus.failed) == queued
    refused = client.post(f"/api/training/jobs/{queued}/exports", json={})
    assert refused.status_code == 409 and refused.json()["code"] == "no_adapters"

    _with_adapters(settings, queued)
    export_id = client.post(f"/api/training/jobs/{queued}/exports", json={}).json()["id"]
    assert _finish_next(client) == export_id
    refused = client.post(f"/api/training/jobs/{export_id}/exports", json={})
    assert refused.status_code == 409 and refused.json()["code"] == "not_a_training_job"
    assert queued in refused.json()["message"]

    for body, param in (
        ({"gguf_path": None}, "body"),
        ({"gguf_quantization": "Q2_K"}, "gguf_quantization"),
        ({"gguf_path": "../../elsewhere"}, "gguf_path"),
        ({"lora_path": "x"}, "lora_path"),
    ):
        invalid = client.post(f"/api/training/jobs/{queued}/exports", json=body)
        assert invalid.status_code == 422 and invalid.json()["param"] == param, (body, invalid.text)


def test_files_being_written_are_not_artifacts_yet(
    client: TestClient, settings: Settings, tiny_model_dir: Path
) -> None:
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir)).json()["id"]
    quantized = settings.runs_dir / job_id / "models" / "quantized"
    quantized.mkdir(parents=True)
    (quantized / "model-Q8_0.gguf").write_bytes(b"GGUF" + bytes(100))
    (quantized / "model-Q8_0.Modelfile").write_text("FROM ./model-Q8_0.gguf\n")
    (quantized / "model-Q4_K_M.gguf.partial").write_bytes(b"GGUF")
    scratch = settings.runs_dir / job_id / "models" / "merged.partial"
    scratch.mkdir()
    (scratch / "config.json").write_text("{}")

    items = client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]
    assert [(a["name"], a["kind"], a["bytes"]) for a in items] == [
        ("models/quantized/model-Q8_0.Modelfile", "modelfile", 23),  # Ollama's, beside its GGUF
        ("models/quantized/model-Q8_0.gguf", "gguf", 104),
    ]
