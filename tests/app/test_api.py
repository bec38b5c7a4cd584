"""The HTTP API against a real SQLite file: validation, jobs, cancel, auth and artifact confinement."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app import jobs
from app.core.config import Settings
from app.main import create_app
from app.models import JobStatus
from tests.conftest import tiny_config

SPEC_CONFIG = {
    "model": {"name": "embedded:gemma-3-270m", "max_seq_length": 2048, "dtype": None, "load_in_4bit": True},
    "lora": {
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "bias": "none",
        "use_gradient_checkpointing": "unsloth",
        "finetune_vision_layers": False,
        "finetune_language_layers": True,
        "finetune_attention_modules": True,
        "finetune_mlp_modules": True,
    },
    "training": {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "warmup_steps": 5,
        "max_steps": None,
        "num_train_epochs": 3,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "linear",
        "optim": "adamw_8bit",
        "weight_decay": 0.01,
        "logging_steps": 1,
        "seed": 3407,
        "output_dir": "outputs",
    },
    "dataset": {"path": "data/splits/train.jsonl", "text_field": "text", "chat_template": "gemma-3"},
    "save": {
        "lora_path": "models/checkpoints/lora",
        "merged_path": "models/checkpoints/merged",
        "gguf_path": "models/quantized",
        "gguf_quantization": "Q8_0",
    },
}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_status_is_idle_before_any_job(client: TestClient) -> None:
    body = client.get("/api/training").json()
    spec_fields = {
        "running": False,
        "step": 0,
        "total_steps": 0,
        "epoch": 0,
        "total_epochs": 0,
        "loss": None,
        "learning_rate": None,
        "eta_seconds": None,
        "started_at": None,
        "checkpoint_at": None,
        "error": None,
    }
    assert {k: body[k] for k in spec_fields} == spec_fields


def test_spec_config_is_accepted_verbatim(client: TestClient) -> None:
    response = client.post("/api/training", json=SPEC_CONFIG)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["phase"] == "queued"
    # Every section as the spec wrote it, plus Forge's own additions (filled with their defaults) and sections.
    added, forge_only = ("training", "dataset", "save"), ("evaluation", "gates")
    assert {k: v for k, v in job["config"].items() if k not in added + forge_only} == {
        k: v for k, v in (SPEC_CONFIG | {"backend": "auto"}).items() if k not in added + forge_only
    }
    for section in added:
        assert job["config"][section].items() >= SPEC_CONFIG[section].items()
    status = client.get("/api/training").json()
    assert status["job_id"] == job["id"] and status["running"] is False and status["total_epochs"] == 3


def test_yaml_body_is_accepted(client: TestClient, tiny_model_dir: Path) -> None:
    import yaml

    body = yaml.safe_dump(tiny_config(tiny_model_dir, max_steps=7))
    response = client.post("/api/training", content=body, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["config"]["training"]["max_steps"] == 7


def test_broken_yaml_names_the_line(client: TestClient) -> None:
    response = client.post(
        "/api/training", content="model:\n  name: [unclosed\n", headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_yaml" and "line" in response.json()["message"]


def test_invalid_config_names_each_bad_field(client: TestClient) -> None:
    bad = {
        "model": {"max_seq_length": 0},
        "lora": {"r": "eight", "bias": "some"},
        "training": {"learning_rate": -1, "warmup_step": 5},
        "save": {"lora_path": "../../etc"},
    }
    response = client.post("/api/training", json=bad)
    assert response.status_code == 422
    body = response.json()
    params = {d["param"] for d in body["details"]}
    assert params == {
        "model.max_seq_length",
        "lora.r",
        "lora.bias",
        "training.learning_rate",
        "training.warmup_step",
        "save.lora_path",
    }
    assert body["code"] == "invalid_request" and "training.warmup_step" in body["message"]
    assert client.get("/api/training/jobs").json()["total"] == 0


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"model": "gemma"}'])
def test_malformed_bodies_are_422(client: TestClient, body: str) -> None:
    response = client.post("/api/training", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_missing_dataset_is_422_before_queueing(client: TestClient) -> None:
    config = SPEC_CONFIG | {"dataset": {"path": "data/splits/nope.jsonl"}}
    response = client.post("/api/training", json=config)
    assert response.status_code == 422
    assert response.json()["code"] == "dataset_not_found" and response.json()["param"] == "dataset.path"
    assert client.get("/api/training/jobs").json()["total"] == 0


@pytest.mark.parametrize("path", ["../outside.jsonl", "/etc/passwd"])
def test_dataset_outside_the_project_is_422(client: TestClient, path: str) -> None:
    response = client.post("/api/training", json=SPEC_CONFIG | {"dataset": {"path": path}})
    assert response.status_code == 422
    assert response.json()["code"] == "path_outside_project"


def test_unknown_model_folder_is_422(client: TestClient, models_root: Path) -> None:
    for name in ["./models/none", str(models_root / "none")]:
        response = client.post("/api/training", json=SPEC_CONFIG | {"model": {"name": name}})
        assert response.status_code == 422 and response.json()["code"] == "model_not_found", name
    response = client.post("/api/training", json=SPEC_CONFIG | {"model": {"name": "embedded:llama"}})
    assert response.status_code == 422 and response.json()["param"] == "model.name"


def test_paths_that_escape_are_refused(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    """Datasets resolve inside the project; models inside it or FORGE_MODEL_DIRS; symlinks are followed."""
    outside = tmp_path / "elsewhere"
    (outside / "model").mkdir(parents=True)
    (outside / "model" / "config.json").write_text("{}")
    (outside / "train.jsonl").write_text((settings.resolved_project_dir / "data/splits/train.jsonl").read_text())
    project = settings.resolved_project_dir
    os.symlink(outside / "train.jsonl", project / "data" / "linked.jsonl")
    os.symlink(outside / "model", project / "linked-model")
    cases = [
        ({"dataset": {"path": "data/linked.jsonl"}}, "dataset.path"),
        ({"dataset": {"path": str(outside / "train.jsonl")}}, "dataset.path"),
        ({"dataset": {"path": "data/../../elsewhere/train.jsonl"}}, "dataset.path"),
        ({"model": {"name": str(outside / "model")}}, "model.name"),
        ({"model": {"name": "./linked-model"}}, "model.name"),
        ({"model": {"name": "linked-model"}}, "model.name"),
        ({"model": {"name": "../elsewhere/model"}}, "model.name"),
    ]
    for patch, param in cases:
        response = client.post("/api/training", json=SPEC_CONFIG | patch)
        assert response.status_code == 422, patch
        assert response.json()["code"] == "path_outside_project" and response.json()["param"] == param
    assert client.get("/api/training/jobs").json()["total"] == 0


def test_jobs_are_listed_newest_first_with_pages(client: TestClient) -> None:
    ids = [client.post("/api/training", json=SPEC_CONFIG).json()["id"] for _ in range(5)]
    first = client.get("/api/training/jobs", params={"limit": 2}).json()
    second = client.get("/api/training/jobs", params={"limit": 2, "offset": 2}).json()
    rest = client.get("/api/training/jobs", params={"limit": 2, "offset": 4}).json()
    assert first["total"] == 5
    assert [j["id"] for j in first["items"] + second["items"] + rest["items"]] == ids[::-1]
    assert client.get(f"/api/training/jobs/{ids[0]}").json()["id"] == ids[0]
    assert client.get("/api/training/jobs", params={"limit": 0}).status_code == 422


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in [
        "/api/training/jobs/nope",
        "/api/training/jobs/nope/artifacts",
        "/api/training/jobs/nope/artifacts/x",
    ]:
        response = client.get(path)
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert client.post("/api/training/jobs/nope/cancel").status_code == 404
    assert client.post("/api/training/jobs/nope/reverify").status_code == 404


def test_cancel_queued_job_then_again_then_finished(client: TestClient, settings: Settings) -> None:
    assert client.post("/api/training/cancel").status_code == 409  # nothing to cancel
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    status_file = settings.status_file
    assert json.loads(status_file.read_text())["status"] == "queued"  # the API writes it on every change
    cancelled = client.post("/api/training/cancel").json()
    assert cancelled["id"] == job_id and cancelled["status"] == "cancelled"
    assert json.loads(status_file.read_text())["status"] == "cancelled"
    again = client.post(f"/api/training/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    # A job that already succeeded cannot be cancelled.
    done_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    db = client.app.state.db  # type: ignore[attr-defined]
    with db.session() as session:
        job = jobs.claim_next(session, "w1", 60)
        assert job is not None and job.id == done_id
        assert jobs.finish(session, job, JobStatus.succeeded, result={"steps": 1})
    response = client.post(f"/api/training/jobs/{done_id}/cancel")
    assert response.status_code == 409 and response.json()["code"] == "job_finished"
    assert client.get(f"/api/training/jobs/{done_id}").json()["status"] == "succeeded"


def test_cancel_running_job_is_recorded(client: TestClient) -> None:
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        job = jobs.claim_next(session, "w1", 60)
        assert job is not None
    response = client.post(f"/api/training/jobs/{job_id}/cancel").json()
    assert response["status"] == "cancelling" and response["cancel_requested"] is True
    # Still running until its worker has stopped it; cancelling again changes nothing.
    assert client.get("/api/training").json()["running"] is True
    assert client.post("/api/training/cancel").json()["status"] == "cancelling"
    with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        assert jobs.renew_lease(session, job, 60) is True  # the worker learns of it on its next heartbeat
        assert jobs.finish(session, job, JobStatus.cancelled)
    assert client.get(f"/api/training/jobs/{job_id}").json()["status"] == "cancelled"
    assert client.post(f"/api/training/jobs/{job_id}/cancel").status_code == 200


def test_every_api_route_needs_the_token(settings: Settings) -> None:
    settings.api_token = SecretStr("s3cret-token")
    app = create_app(settings)
    operations = [(m.upper(), p) for p, item in app.openapi()["paths"].items() for m in item]
    assert (
        len(operations) == 30
    )  # with GET /api/training/workers, POST .../reverify, POST .../promote, GET .../accepted
    with TestClient(app) as client:
        for method, template in operations:
            path = template.replace("{job_id}", "abc").replace("{path}", "x.json").replace("{file_id}", "file-x")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                body = response.json()
                # The OpenAI-compatible routes answer in OpenAI's error shape.
                assert (body["error"] if path.startswith("/v1") else body)["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"
                assert "s3cret-token" not in response.text
            ok = client.request(method, path, headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code != 401, (method, path)
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_openapi_documents_every_route_with_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/api/training",
        "/api/training/cancel",
        "/api/training/jobs",
        "/api/training/jobs/{job_id}",
        "/api/training/jobs/{job_id}/cancel",
        "/api/training/jobs/{job_id}/resume",
        "/api/training/workers",
        "/api/training/jobs/{job_id}/exports",
        "/api/training/jobs/{job_id}/artifacts",
        "/api/training/jobs/{job_id}/artifacts/{path}",
        "/api/training/datasets",
        "/api/training/datasets/validate",
        "/api/training/jobs/{job_id}/events",
        "/api/training/jobs/{job_id}/events/stream",
        "/api/training/jobs/{job_id}/checkpoints",
        "/api/training/jobs/{job_id}/reverify",
        "/api/training/jobs/{job_id}/promote",
        "/api/training/accepted",
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}",
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        "/v1/fine_tuning/jobs/{job_id}/events",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints",
    }
    post = spec["paths"]["/api/training"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TrainingConfig")
    assert spec["components"]["schemas"]["TrainingStatus"]["required"][:3] == [
        "running",
        "step",
        "total_steps",
    ]
    for name in ("ModelSection", "LoraSection", "TrainingSection", "DatasetSection", "SaveSection", "ExportRequest"):
        for field in spec["components"]["schemas"][name]["properties"].values():
            assert field.get("description"), f"{name} has an undocumented field"


def test_artifact_paths_cannot_escape_the_run_folder(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    run = settings.runs_dir / job_id
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "training-stats.json").write_text(json.dumps({"steps": 3}))
    secret = settings.resolved_project_dir / "secret.txt"
    secret.write_text("top secret")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, run / "link.txt")
    os.symlink(settings.resolved_project_dir, run / "linkdir")

    listing = client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]
    assert [a["name"] for a in listing] == ["metrics/training-stats.json"]
    assert listing[0]["kind"] == "metrics"
    ok = client.get(f"/api/training/jobs/{job_id}/artifacts/metrics/training-stats.json")
    assert ok.status_code == 200 and ok.json() == {"steps": 3}

    base = f"/api/training/jobs/{job_id}/artifacts/"
    attacks = [
        "../../secret.txt",
        "..%2F..%2Fsecret.txt",
        "%2e%2e/%2e%2e/secret.txt",
        "%2E%2E%2F%2E%2E%2Fsecret.txt",
        "metrics/../../../secret.txt",
        "..\\..\\secret.txt",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "//etc/passwd",
        "link.txt",
        "linkdir/secret.txt",
        "metrics%00/training-stats.json",
        "metrics",
        "",
    ]
    for attack in attacks:
        response = client.get(base + attack)
        assert response.status_code == 404, attack
        assert "top secret" not in response.text and "outside" not in response.text
        assert "root:" not in response.text


def test_huge_offset_is_an_empty_page_or_422_never_500(client: TestClient) -> None:
    assert client.get("/api/training/jobs", params={"offset": 2**63 - 1}).json()["items"] == []
    response = client.get("/api/training/jobs", params={"offset": 2**63})
    assert response.status_code == 422 and response.json()["details"][0]["param"] == "query.offset"
