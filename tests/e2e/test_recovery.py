"""Recovery with real processes: graceful shutdown, kill -9, an API restart, and many workers on one queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, tiny_config
from tests.e2e.conftest import Processes, wait_for


def _job(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/api/training/jobs/{job_id}").json()


def _losses(project: Path, job_id: str) -> dict[int, float]:
    stats = json.loads((project / "runs" / job_id / "metrics" / "training-stats.json").read_text())
    return {entry["step"]: entry["loss"] for entry in stats["log_history"] if "loss" in entry}


def _adapter(project: Path, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(project / "runs" / job_id / "models/checkpoints/lora/adapter_model.safetensors")


def test_sigterm_checkpoints_and_the_job_resumes_with_the_same_result(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    base = processes.api()
    client = httpx.Client(base_url=base, timeout=60)
    config = tiny_config(tiny_model_dir, max_steps=16, save_steps=100, learning_rate=2e-3)

    # The reference: the same job, never interrupted.
    reference = client.post("/api/training", json=config).json()["id"]
    assert processes.worker("--exit-when-idle").wait(timeout=300) == 0
    assert _job(client, reference)["status"] == "succeeded"

    job_id = client.post("/api/training", json=config).json()["id"]
    worker = processes.worker()
    wait_for(lambda: _job(client, job_id)["step"] >= 5, 180, "a few steps")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0  # a graceful exit

    stopped = _job(client, job_id)
    assert stopped["status"] == "queued" and stopped["worker_id"] is None
    step = stopped["step"]
    assert 5 <= step < 16 and stopped["resume_from"] == f"outputs/checkpoint-{step}"
    assert (project / "runs" / job_id / stopped["resume_from"] / "optimizer.pt").is_file()

    processes.worker("--exit-when-idle").wait(timeout=300)
    done = _job(client, job_id)
    assert done["status"] == "succeeded" and done["attempt"] == 2 and done["step"] == 16
    log = (project / "runs" / job_id / "logs" / "training.log").read_text()
    assert f"resuming from {project / 'runs' / job_id / stopped['resume_from']}" in log
    # The baseline of the first attempt is kept (the same base model scored the same), and the gates see
    # the whole loss curve, from before the shutdown too.
    assert "baseline: kept from the first attempt" in log
    assert done["result"]["baseline"] == _job(client, reference)["result"]["baseline"]
    converged = next(g for g in done["gates"]["gates"] if g["name"] == "loss-converged")
    assert converged["details"]["logged"] == 16

    # Same losses after the resume as without it, and the same adapter, up to float noise.
    expected, resumed = _losses(project, reference), _losses(project, job_id)
    assert sorted(resumed) == list(range(step + 1, 17))
    for s in resumed:
        assert abs(resumed[s] - expected[s]) < 1e-3 * max(1.0, abs(expected[s])), (s, resumed[s], expected[s])
    a, b = _adapter(project, reference), _adapter(project, job_id)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_killed_worker_job_resumes_from_its_last_checkpoint(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    lease = {"FORGE_LEASE_SECONDS": "3"}
    base = processes.api(**lease)
    client = httpx.Client(base_url=base, timeout=60)
    config = tiny_config(tiny_model_dir, max_steps=24, save_steps=3)
    del config["training"]["gradient_accumulation_steps"]  # measured batch, accumulation to match 2 per step
    config["training"] |= {"per_device_train_batch_size": "auto", "effective_batch_size": 2}
    job_id = client.post("/api/training", json=config).json()["id"]
    first = processes.worker(**lease)
    wait_for(lambda: _job(client, job_id)["step"] >= 8, 180, "steps past two checkpoints")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at_step = _job(client, job_id)["step"]

    requeued = wait_for(
        lambda: (job := _job(client, job_id))["status"] == "queued" and job, 30, "the API to re-queue the lost job"
    )
    checkpoint_step = int(requeued["resume_from"].rsplit("-", 1)[1])
    assert checkpoint_step % 3 == 0 and killed_at_step - checkpoint_step <= 3 + 1  # at most save_steps lost

    processes.worker(**lease)
    wait_for(lambda: _job(client, job_id)["status"] == "succeeded", 180, "the resumed job", interval=0.5)
    done = _job(client, job_id)
    assert done["attempt"] == 2 and done["step"] == 24 and done["error"] is None
    assert min(_losses(project, job_id)) == checkpoint_step + 1  # the log of this attempt starts after it
    # The checkpoint goes on with the batch the first attempt measured, not a new measurement.
    run = project / "runs" / job_id
    assert done["result"]["batch_size"] == json.loads((run / "metrics/batch-size.json").read_text())
    assert done["result"]["batch_size"]["per_device_train_batch_size"] == 2
    assert "batch size: kept from the first attempt" in (run / "logs/training.log").read_text()


def test_api_restart_loses_nothing(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    base = processes.api()
    client = httpx.Client(base_url=base, timeout=60)
    done_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2)).json()["id"]
    worker = processes.worker()
    wait_for(lambda: _job(client, done_id)["status"] == "succeeded", 180, "the first job")
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    wait_for(lambda: _job(client, job_id)["step"] >= 3, 180, "the second job to train")

    before_jobs = client.get("/api/training/jobs").json()
    before_artifacts = client.get(f"/api/training/jobs/{done_id}/artifacts").json()
    api = processes.procs[0]
    api.send_signal(signal.SIGTERM)
    assert api.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    time.sleep(1)  # the worker keeps training and reporting while the API is down

    client = httpx.Client(base_url=processes.api(), timeout=60)
    after_jobs = client.get("/api/training/jobs").json()
    assert [j["id"] for j in after_jobs["items"]] == [j["id"] for j in before_jobs["items"]]
    assert after_jobs["items"][1] == before_jobs["items"][1]  # the finished job, field for field
    assert after_jobs["items"][0]["step"] >= before_jobs["items"][0]["step"]
    assert client.get(f"/api/training/jobs/{done_id}/artifacts").json() == before_artifacts
    status = client.get("/api/training").json()
    assert status["running"] is True and status["job_id"] == job_id
    on_disk = json.loads((project / ".factory" / "training-status.json").read_text())
    assert on_disk["job_id"] == job_id and on_disk["running"] is True
    client.post("/api/training/cancel")
    wait_for(lambda: _job(client, job_id)["status"] == "cancelled", 60, "the cancel after the restart")
    assert worker.poll() is None


CLAIMER = """
import sys, time
from app import jobs
from app.core.config import Settings
from app.core.db import Database
from app.models import JobStatus

db = Database(Settings())
name = sys.argv[1]
claimed = []
with db.session() as session:
    while (job := jobs.claim_next(session, name, 60)) is not None:
        claimed.append(job.id)
        assert jobs.finish(session, job, JobStatus.succeeded, result={"by": name})
print(" ".join(claimed))
"""


def test_four_workers_claim_each_of_200_jobs_exactly_once(project: Path, models_root: Path) -> None:
    """The queue's claim, raced by four real processes on one SQLite file."""
    from app import jobs
    from app.core.config import Settings
    from app.core.db import Database
    from app.training_config import TrainingConfig

    db = Database(Settings(project_dir=project))
    with db.session() as session:
        ids = {jobs.create(session, TrainingConfig())[0].id for _ in range(200)}
    env = dict(os.environ, FORGE_PROJECT_DIR=str(project))
    racers = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, f"racer-{i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE)
        for i in range(4)
    ]
    outputs = [racer.communicate(timeout=300)[0].decode().split() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    claimed = [job_id for output in outputs for job_id in output]
    assert len(claimed) == 200 and set(claimed) == ids  # every job once, none twice
    assert sum(1 for output in outputs if output) >= 2, "the racers should share the queue"
    with db.session() as session:
        rows, total = jobs.page(session, limit=200, offset=0)
    assert total == 200 and all(r.attempt == 1 and r.status == "succeeded" for r in rows)
    assert all(r.result == {"by": r.worker_id} for r in rows)
