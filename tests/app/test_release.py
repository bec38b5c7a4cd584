"""POST /api/training/jobs/{id}/reverify on a release the worker wrote: a clean run is unchanged; a byte changed
after the fact, a file removed or added, a dataset edited are each reported; no release is a 409 saying why."""

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
from tests.worker.test_release import digest, finished_run
from worker import release


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_reverify_reports_a_clean_run_then_every_change(
    client: TestClient, settings: Settings, project: Path, tiny_model_dir: Path, models_root: Path, tmp_path: Path
) -> None:
    assert client.post("/api/training/jobs/nope/reverify").status_code == 404
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir)).json()["id"]
    queued = client.post(f"/api/training/jobs/{job_id}/reverify")
    assert queued.status_code == 409 and queued.json()["code"] == "no_release"
    assert "it is queued: release.json is written when a job succeeds" in queued.json()["message"]

    with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        job = jobs.claim_next(session, "w1", 60)
        assert job is not None and jobs.finish(session, job, JobStatus.succeeded, result={"steps": 4})
    spec, run = finished_run(project, tiny_model_dir, models_root, tmp_path / "cache", job_id)
    assert client.post(f"/api/training/jobs/{job_id}/reverify").json()["code"] == "no_release"  # none written yet
    release.write(spec, run)
    listing = {a["name"]: a for a in client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]}
    assert listing["release.json"]["kind"] == "release"

    clean = client.post(f"/api/training/jobs/{job_id}/reverify")
    assert clean.status_code == 200, clean.text
    body = clean.json()
    assert body["unchanged"] is True and body["differences"] == []
    model_files = len([p for p in tiny_model_dir.rglob("*") if p.is_file()])
    assert body["checked"] == 5 + 3 + model_files  # artifacts, train/val/test, the base model's files
    assert body["gguf_check"]["holds"] is True and body["gguf_check"]["verdict"] == "passed"
    assert body["gguf_check"]["files"] == ["models/quantized/model-Q8_0.gguf"]

    weights = run.lora / "adapter_model.safetensors"
    recorded = digest(weights)
    flip_a_byte(weights)
    flip_a_byte(run.root / "models/quantized/model-Q8_0.gguf")
    run.training_stats.unlink()
    (run.metrics_dir / "extra.json").write_text("{}\n")
    with (project / "data/splits/test.jsonl").open("a") as handle:
        handle.write('{"messages": []}\n')
    (run.logs / "training.log").write_text("more log lines after the job\n")  # not part of the release
    body = client.post(f"/api/training/jobs/{job_id}/reverify").json()
    assert body["unchanged"] is False
    found = {(d["section"], d["path"], d["change"]) for d in body["differences"]}
    assert found == {
        ("artifact", "models/checkpoints/lora/adapter_model.safetensors", "changed"),
        ("artifact", "models/quantized/model-Q8_0.gguf", "changed"),
        ("artifact", "metrics/training-stats.json", "missing"),
        ("artifact", "metrics/extra.json", "added"),
        ("dataset", "data/splits/test.jsonl", "changed"),
    }
    changed = next(d for d in body["differences"] if d["path"].endswith("adapter_model.safetensors"))
    assert changed["recorded_sha256"] == recorded and changed["sha256"] == digest(weights)
    assert changed["bytes"] == changed["recorded_bytes"] == 4096
    gguf = body["gguf_check"]
    assert gguf["holds"] is False and "model-Q8_0.gguf differ" in gguf["message"]
    assert f"POST /api/training/jobs/{job_id}/exports" in gguf["message"]
