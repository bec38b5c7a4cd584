"""Cancel, crashes and lost workers, with real processes: a job never stays `running` once nobody runs it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for


def _job(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/api/training/jobs/{job_id}").json()


def test_cancel_stops_within_a_step_and_the_worker_goes_on(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    base = processes.api()
    worker = processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    long_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    next_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2)).json()["id"]

    wait_for(lambda: _job(client, long_id)["step"] >= 3, 180, "the long job to train a few steps")
    response = client.post("/api/training/cancel")
    assert response.status_code == 200 and response.json()["id"] == long_id
    asked_at_step = response.json()["step"]
    assert response.json()["cancel_requested"] is True

    wait_for(lambda: _job(client, long_id)["status"] == "cancelled", 60, "the job to stop")
    job = _job(client, long_id)
    assert job["error"] is None and job["finished_at"] is not None
    # Stopped promptly: within the heartbeat plus a step or two, not thousands of steps later.
    assert job["step"] - asked_at_step < 50, (asked_at_step, job["step"])

    # The same worker takes the next job; the cancelled job stays cancelled.
    wait_for(lambda: _job(client, next_id)["status"] == "succeeded", 180, "the next job", interval=0.5)
    assert worker.poll() is None
    assert _job(client, long_id)["status"] == "cancelled"
    assert client.post(f"/api/training/jobs/{next_id}/cancel").status_code == 409


def test_killed_training_process_fails_the_job_not_the_worker(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    base = processes.api()
    worker = processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    wait_for(lambda: _job(client, job_id)["step"] >= 2, 180, "training to start")

    # The training child is the worker's only child process; kill it as the OOM killer would.
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert children, "the worker runs training in a child process"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)

    wait_for(lambda: _job(client, job_id)["status"] == "failed", 60, "the job to be marked failed")
    job = _job(client, job_id)
    assert job["error"]["code"] == "worker_crashed" and "exit code -9" in job["error"]["message"]
    status = client.get("/api/training").json()
    assert status["running"] is False and status["error"] == job["error"]["message"]
    status_file = project / ".factory" / "training-status.json"  # written just after the database
    wait_for(lambda: json.loads(status_file.read_text())["error_code"] == "worker_crashed", 10, "the status file")

    # The worker survived and trains the next job.
    next_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2)).json()["id"]
    wait_for(lambda: _job(client, next_id)["status"] == "succeeded", 180, "the next job", interval=0.5)
    assert worker.poll() is None


def test_killed_worker_is_noticed_through_its_lease(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    lease = {"FORGE_LEASE_SECONDS": "3"}
    base = processes.api(**lease)
    first = processes.worker(**lease)
    client = httpx.Client(base_url=base, timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    wait_for(lambda: _job(client, job_id)["step"] >= 2, 180, "training to start")

    os.killpg(first.pid, signal.SIGKILL)  # the worker and its training child, as a lost machine would
    first.wait()
    assert _job(client, job_id)["status"] == "running"  # nobody has noticed yet

    # No worker is left; the API notices the lease running out on its own.
    killed_at = time.monotonic()
    wait_for(lambda: _job(client, job_id)["status"] == "failed", 60, "the lost job to be failed")
    assert time.monotonic() - killed_at < 30
    assert _job(client, job_id)["error"]["code"] == "worker_lost"
    # The status file says so too, though no worker is left to write it.
    on_disk = json.loads((project / ".factory" / "training-status.json").read_text())
    assert on_disk["running"] is False and on_disk["error_code"] == "worker_lost"


def test_bad_dataset_fails_with_the_line_at_fault(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    base = processes.api()
    client = httpx.Client(base_url=base, timeout=60)
    bad = project / "data" / "splits" / "broken.jsonl"
    bad.write_text('{"conversations": [{"role": "user", "content": "hi"}]}\n')
    config = tiny_config(tiny_model_dir) | {"dataset": {"path": "data/splits/broken.jsonl"}}
    # Refused before it is queued, naming the line and the field.
    refused = client.post("/api/training", json=config)
    assert refused.status_code == 422 and refused.json()["code"] == "dataset_invalid"
    detail = refused.json()["details"][0]
    assert (detail["line"], detail["field"], detail["type"]) == (1, "conversations[0]", "no_assistant_turn")
    # A file that goes bad after the job was queued is caught by the worker, before any training step.
    bad.write_text((project / "data" / "splits" / "train.jsonl").read_text())
    job_id = client.post("/api/training", json=config).json()["id"]
    bad.write_text('{"conversations": [{"role": "user", "content": "hi"}]}\n')
    processes.worker()
    wait_for(lambda: _job(client, job_id)["status"] == "failed", 120, "the job to fail")
    job = _job(client, job_id)
    assert job["error"]["code"] == "dataset_invalid" and job["step"] == 0
    assert "broken.jsonl:1: conversations[0] has no assistant turn" in job["error"]["message"]


def test_diverging_loss_stops_the_job_early(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    # A model whose weights overflow float32 (as a corrupted checkpoint would): its gradients are NaN at once.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    poisoned = processes.models_root / "poisoned-gemma3"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1e36)
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(1e36)
    model.save_pretrained(poisoned)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(poisoned)

    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    # With training.auto_retry (the default) a diverged job runs once more from the start at half the learning
    # rate; this model diverges at any rate, so the second failure stands. Without it the first one does.
    retried = client.post("/api/training", json=tiny_config(poisoned, max_steps=300)).json()["id"]
    once = client.post("/api/training", json=tiny_config(poisoned, max_steps=300, auto_retry=False)).json()["id"]
    for job_id in (retried, once):
        wait_for(lambda j=job_id: _job(client, j)["status"] not in ("queued", "running"), 240, "the job to end")
        job = _job(client, job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "diverged", job["error"]
        assert "the gradient norm became nan at step 1" in job["error"]["message"]
        assert "Lower training.learning_rate" in job["error"]["message"]
        assert job["step"] == 1
    job = _job(client, retried)
    assert job["attempt"] == 2 and job["config"]["training"]["learning_rate"] == 2.5e-3
    assert [(r["attempt"], r["reason"], r["step"], r["resume_from"]) for r in job["retries"]] == [
        (1, "diverged", 1, None)
    ]
    assert job["retries"][0]["changes"] == {"training.learning_rate": [5e-3, 2.5e-3]}
    requeued = [
        e for e in client.get(f"/api/training/jobs/{retried}/events").json()["items"] if e["type"] == "requeued"
    ]
    assert [e["message"] for e in requeued] == [
        "retrying from the start at learning rate 0.0025 (was 0.005) after diverging at step 1"
    ]
    job = _job(client, once)
    assert (job["attempt"], job["retries"], job["config"]["training"]["learning_rate"]) == (1, [], 5e-3)


def test_worker_stops_a_job_whose_lease_was_taken(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    import sqlite3

    base = processes.api()
    worker = processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    wait_for(lambda: _job(client, job_id)["step"] >= 2, 180, "training to start")

    # Another worker took the job over (as after a lease expiry): this one must stop and write nothing more.
    with sqlite3.connect(project / ".factory" / "forge.db") as db:
        db.execute("UPDATE job SET worker_id = 'thief', attempt = attempt + 1 WHERE id = ?", (job_id,))
    taken_at = _job(client, job_id)

    def stopped() -> bool:
        log = "".join(p.read_text() for p in processes.logs.glob("worker-*.log"))
        return "is no longer ours" in log and f"job {job_id}: running" in log

    wait_for(stopped, 60, "the worker to give the job up")
    time.sleep(1.5)
    after = _job(client, job_id)
    assert after["worker_id"] == "thief" and after["status"] == "running"
    assert (after["step"], after["loss"]) == (taken_at["step"], taken_at["loss"])  # no late writes landed
    assert worker.poll() is None
