"""The /v1 routes' checks and shapes, in process (the SDK flow through real processes is tests/e2e/test_openai.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _upload(client: TestClient, project: Path) -> str:
    lines = (project / "data" / "splits" / "train.jsonl").read_text().splitlines()
    body = "".join(json.dumps({"messages": json.loads(line)["conversations"]}) + "\n" for line in lines)
    response = client.post("/v1/files", files={"file": ("t.jsonl", body.encode())}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _error(response: object) -> dict[str, str | None]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_bad_hyperparameters_and_config_are_named(client: TestClient, project: Path, tiny_model_dir: Path) -> None:
    file_id = _upload(client, project)
    base = {"model": str(tiny_model_dir), "training_file": file_id}
    cases = [
        ({"hyperparameters": {"n_epochs": 0}}, 422, "training.num_train_epochs"),
        ({"hyperparameters": {"batch_size": 0}}, 422, "training.per_device_train_batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, 422, "training.learning_rate"),
        ({"hyperparameters": {"epochs": 2}}, 400, "hyperparameters.epochs"),
        ({"forge": {"training": {"max_steps": "many"}}}, 422, "training.max_steps"),
        ({"forge": {"lora": {"rank": 4}}}, 422, "lora.rank"),
        ({"method": {"type": "reinforcement"}}, 400, "method.type"),
        ({"validation_file": "file-missing"}, 404, "validation_file"),
        ({"suffix": "has space"}, 400, "suffix"),
    ]
    for extra, status, param in cases:
        response = client.post("/v1/fine_tuning/jobs", json=base | extra)
        assert response.status_code == status, (extra, response.text)
        assert _error(response)["param"] == param, extra
    assert client.get("/v1/fine_tuning/jobs").json() == {
        "object": "list",
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }


def test_jobs_list_by_cursor_and_show_forge_jobs_too(client: TestClient, project: Path, tiny_model_dir: Path) -> None:
    file_id = _upload(client, project)
    body = {"model": str(tiny_model_dir), "training_file": file_id, "hyperparameters": {"n_epochs": 2}}
    made = [client.post("/v1/fine_tuning/jobs", json=body).json()["id"] for _ in range(3)]
    own = client.post("/api/training", json={"model": {"name": str(tiny_model_dir)}}).json()["id"]
    first = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == [own, made[2]] and first["has_more"] is True
    rest = client.get("/v1/fine_tuning/jobs", params={"after": first["last_id"]}).json()
    assert [j["id"] for j in rest["data"]] == [made[1], made[0]] and rest["has_more"] is False
    job = rest["data"][0]
    assert job["status"] == "queued" and job["hyperparameters"]["n_epochs"] == 2 and job["training_file"] == file_id
    assert job["method"]["type"] == "supervised" and job["fine_tuned_model"] is None

    events = client.get(f"/v1/fine_tuning/jobs/{made[0]}/events").json()["data"]
    assert [e["message"] for e in events] == ["job queued"] and events[0]["object"] == "fine_tuning.job.event"
    assert _error(client.get(f"/v1/fine_tuning/jobs/{made[0]}/events", params={"after": "x"}))["param"] == "after"
    cancelled = client.post(f"/v1/fine_tuning/jobs/{made[0]}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert client.get(f"/v1/fine_tuning/jobs/{made[0]}/checkpoints").json()["data"] == []

    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [file_id]
    assert client.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}
    assert _error(client.get(f"/v1/files/{file_id}"))["code"] == "not_found"
