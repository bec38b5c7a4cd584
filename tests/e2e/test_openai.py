"""The OpenAI-compatible API with the real `openai` SDK, against real uvicorn and a real worker training a tiny
Gemma 3: files, fine-tuning jobs, their events and checkpoints, cancel, and OpenAI's error shape."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for

TOKEN = "sdk-token"


def openai_rows(project: Path, split: str) -> bytes:
    """The project's demo split as OpenAI chat rows ({"messages": [...]})."""
    lines = (project / "data" / "splits" / f"{split}.jsonl").read_text().splitlines()
    return "".join(json.dumps({"messages": json.loads(line)["conversations"]}) + "\n" for line in lines).encode()


def forge_settings(tiny_model_dir: Path, **training: Any) -> dict[str, Any]:
    """Forge's own config for the tiny model, sent as the `forge` extension (the SDK's extra_body)."""
    config = tiny_config(tiny_model_dir, **training)
    del config["model"]["name"]  # the OpenAI `model` field names it
    return config


def test_fine_tune_through_the_openai_sdk(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    base = processes.api(FORGE_API_TOKEN=TOKEN)
    processes.worker()
    client = OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)

    train = client.files.create(file=("train.jsonl", openai_rows(project, "train")), purpose="fine-tune")
    val = client.files.create(file=("val.jsonl", io.BytesIO(openai_rows(project, "val"))), purpose="fine-tune")
    assert train.id.startswith("file-") and train.object == "file" and train.filename == "train.jsonl"
    assert train.bytes == len(openai_rows(project, "train")) and train.purpose == "fine-tune"
    assert client.files.retrieve(train.id).id == train.id
    assert {f.id for f in client.files.list()} >= {train.id, val.id}
    stored = project / "data" / "openai-files" / f"{train.id}.jsonl"
    assert stored.read_bytes() == openai_rows(project, "train")  # kept under the project

    job = client.fine_tuning.jobs.create(
        model=str(tiny_model_dir),
        training_file=train.id,
        validation_file=val.id,
        suffix="lessons",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
        metadata={"team": "data-factory"},
        extra_body={"forge": forge_settings(tiny_model_dir, max_steps=8, save_steps=4, eval_steps=4)},
    )
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.fine_tuned_model is None
    assert (job.training_file, job.validation_file, job.seed) == (train.id, val.id, 7)
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == 25.0  # tiny_config's 5e-3 over Forge's 2e-4
    assert job.metadata == {"team": "data-factory"}

    # One implementation underneath: the same job on Forge's own API.
    forge = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    own = forge.get(f"/api/training/jobs/{job.id}").json()
    assert own["config"]["training"]["num_train_epochs"] == 1 and own["config"]["training"]["seed"] == 7
    assert own["config"]["dataset"]["path"] == f"data/openai-files/{train.id}.jsonl"

    seen_running: list[str] = []

    def done() -> bool:
        current = client.fine_tuning.jobs.retrieve(job.id)
        if current.status == "running":
            seen_running.append(current.status)
            events = client.fine_tuning.jobs.list_events(job.id, limit=5)
            assert all(e.object == "fine_tuning.job.event" for e in events.data)
        return current.status in ("succeeded", "failed", "cancelled")

    wait_for(done, 240, "the fine-tuning job")
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "succeeded", (final.error, processes.log_text())
    assert seen_running, "never saw the job running"
    assert final.fine_tuned_model == f"ft:{tiny_model_dir.name}:lessons:{job.id}"
    assert final.finished_at and final.finished_at >= final.created_at and final.trained_tokens

    # Events newest first, paginated by the SDK itself through `after`.
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=4))
    ids = [int(e.id) for e in events]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert events[0].message == "job succeeded" and events[-1].message.startswith("job queued")
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and {e.level for e in events} <= {"info", "warn"}  # a gate the random model fails warns

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [8, 4]
    for checkpoint in checkpoints:
        assert checkpoint.object == "fine_tuning.job.checkpoint" and checkpoint.fine_tuning_job_id == job.id
        assert checkpoint.metrics.train_loss is not None and checkpoint.metrics.valid_loss is not None
        assert checkpoint.fine_tuned_model_checkpoint.endswith(f"ckpt-step-{checkpoint.step_number}")

    # Another job, cancelled while it runs.
    other = client.fine_tuning.jobs.create(
        model=str(tiny_model_dir),
        training_file=train.id,
        extra_body={"forge": forge_settings(tiny_model_dir, max_steps=400)},
    )
    wait_for(lambda: client.fine_tuning.jobs.retrieve(other.id).status == "running", 120, "the second job to run")
    client.fine_tuning.jobs.cancel(other.id)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(other.id).status == "cancelled", 120, "the cancel")
    listed = client.fine_tuning.jobs.list(limit=1)
    assert listed.data[0].id == other.id and listed.has_more is True
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=other.id).data] == [job.id]
    # Newest first: the end, after the request (the step under way may still log its metrics in between).
    kinds = [e.message for e in client.fine_tuning.jobs.list_events(other.id, limit=100).data]
    requested = next(i for i, m in enumerate(kinds) if m.startswith("cancel requested"))
    assert kinds[0] == "job cancelled" and requested > 0

    deleted = client.files.delete(val.id)
    assert deleted.deleted is True and deleted.id == val.id
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve(val.id)
    assert missing.value.body["code"] == "not_found"  # type: ignore[index]


def test_errors_come_in_openai_shape(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    base = processes.api()
    client = OpenAI(base_url=f"{base}/v1", api_key="any", max_retries=0)
    rows = openai_rows(project, "train").decode().splitlines()
    rows[2] = "not json"
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.files.create(file=("broken.jsonl", "\n".join(rows).encode() + b"\n"), purpose="fine-tune")
    error = bad.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "dataset_invalid" and error["type"] == "invalid_request_error"
    assert "broken.jsonl:3:" in error["message"], error["message"]
    assert not list((project / "data" / "openai-files").glob("*"))  # a bad file is not kept

    with pytest.raises(openai.UnprocessableEntityError) as purpose:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert purpose.value.response.json()["error"]["param"] == "purpose"

    with pytest.raises(openai.NotFoundError) as no_file:
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file="file-nope")
    assert no_file.value.response.json()["error"]["param"] == "training_file"

    train = client.files.create(file=("t.jsonl", openai_rows(project, "train")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as method:
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train.id, method={"type": "dpo"})
    assert method.value.response.json()["error"]["param"] == "method.type"
    with pytest.raises(openai.UnprocessableEntityError) as model:
        client.fine_tuning.jobs.create(model=str(tiny_model_dir / "missing"), training_file=train.id)
    assert model.value.response.json()["error"]["param"] == "model.name"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("nope")
