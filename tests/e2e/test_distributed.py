"""One job on several GPUs (training.num_gpus), on the CPU: two DDP ranks (gloo) under torchrun, through the real API
and worker, trained as one process trains the same global batch; cancel and SIGTERM + resume with two ranks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for

TWO_SLOTS = {"FORGE_WORKER_GPUS": "0,1"}  # a CPU worker with two rank slots: each rank a gloo process


def _job(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/api/training/jobs/{job_id}").json()


def _losses(project: Path, job_id: str) -> dict[int, float]:
    stats = json.loads((project / "runs" / job_id / "metrics" / "training-stats.json").read_text())
    return {entry["step"]: entry["loss"] for entry in stats["log_history"] if "loss" in entry}


def _processes_of(job_id: str) -> list[str]:
    """The command lines of live processes started for the job (the torchrun agent and its ranks name its folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"forge-{job_id}-" in text:
            found.append(text)
    return found


def _config(model: Path, num_gpus: int, **training: object) -> dict:
    # 8 examples per optimizer step: 2 per device x 4 micro-batches on one process, x 2 on each of two ranks.
    config = tiny_config(model, num_gpus=num_gpus, gradient_accumulation_steps=4, **training)
    config["evaluation"] |= {"baseline": False, "max_examples": 2}  # rank 0's alone: kept short
    return config


def test_two_ranks_train_as_one_process_with_the_same_global_batch(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    client = httpx.Client(base_url=processes.api(), timeout=60)
    one = client.post("/api/training", json=_config(tiny_model_dir, 1, max_steps=3, save_steps=3)).json()["id"]
    two = client.post("/api/training", json=_config(tiny_model_dir, 2, max_steps=3, save_steps=3)).json()["id"]
    assert processes.worker("--exit-when-idle", **TWO_SLOTS).wait(timeout=600) == 0, processes.log_text()
    single, ranks = _job(client, one), _job(client, two)
    assert single["status"] == ranks["status"] == "succeeded", processes.log_text()

    # Two ranks really trained: each saved its RNG state in the checkpoint, and the batch is reported per rank.
    checkpoint = project / "runs" / two / "outputs" / "checkpoint-3"
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    plan = ranks["result"]["batch_size"]
    assert (plan["per_device_train_batch_size"], plan["gradient_accumulation_steps"], plan["ranks"]) == (2, 2, 2)
    assert plan["effective_batch_size"] == single["result"]["batch_size"]["effective_batch_size"] == 8

    # The same loss at every step, up to the order of the sums.
    expected, got = _losses(project, one), _losses(project, two)
    assert sorted(got) == sorted(expected) == [1, 2, 3]
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= 1e-3 * abs(loss), (step, got[step], loss)

    # One progress stream and one set of artifacts: rank 0's, as a single process writes them.
    logs = {job_id: (project / "runs" / job_id / "logs" / "training.log").read_text() for job_id in (one, two)}
    assert logs[two].count("metrics {") == logs[one].count("metrics {") == 5  # 3 steps, the eval, the summary
    names = {
        job_id: {a["name"] for a in client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]}
        for job_id in (one, two)
    }
    # Only the checkpoint's RNG states differ: one per rank (rng_state_0.pth, rng_state_1.pth), or rng_state.pth.
    assert {n for n in names[two] if "rng_state" not in n} == {n for n in names[one] if "rng_state" not in n}
    assert ranks["step"] == ranks["total_steps"] == 3 and ranks["result"]["evaluation"] is not None
    assert _processes_of(two) == []


@pytest.mark.long
def test_two_ranks_stop_for_a_cancel_and_resume_after_sigterm(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    client = httpx.Client(base_url=processes.api(), timeout=60)
    config = _config(tiny_model_dir, 2, max_steps=5000)
    cancelled = client.post("/api/training", json=config).json()["id"]
    worker = processes.worker(**TWO_SLOTS)
    wait_for(lambda: _job(client, cancelled)["step"] >= 1, 240, "two ranks training")
    assert client.post(f"/api/training/jobs/{cancelled}/cancel").status_code == 200
    wait_for(lambda: _job(client, cancelled)["status"] == "cancelled", 120, "the cancel")
    wait_for(lambda: _processes_of(cancelled) == [], 60, "every rank of the cancelled job to exit")

    resumed = client.post("/api/training", json=_config(tiny_model_dir, 2, max_steps=6, save_steps=100)).json()["id"]
    wait_for(lambda: _job(client, resumed)["step"] >= 2, 300, "a few steps")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0, processes.log_text()
    stopped = _job(client, resumed)
    assert stopped["status"] == "queued" and stopped["resume_from"] == f"outputs/checkpoint-{stopped['step']}"
    checkpoint = project / "runs" / resumed / stopped["resume_from"]
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert _processes_of(resumed) == []

    assert processes.worker("--exit-when-idle", **TWO_SLOTS).wait(timeout=600) == 0, processes.log_text()
    done = _job(client, resumed)
    assert done["status"] == "succeeded" and done["attempt"] == 2 and done["step"] == 6, processes.log_text()
    assert sorted(_losses(project, resumed)) == list(range(stopped["step"] + 1, 7))
    assert done["result"]["batch_size"]["ranks"] == 2


@pytest.mark.long
def test_two_ranks_end_with_a_stalled_or_a_killed_worker(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    """The lease watchdog ends every rank of a worker that stops renewing; a worker's death takes them all."""
    lease = {"FORGE_LEASE_SECONDS": "3", **TWO_SLOTS}
    client = httpx.Client(base_url=processes.api(**lease), timeout=60)
    config = _config(tiny_model_dir, 2, max_steps=5000, save_steps=1)
    job_id = client.post("/api/training", json=config).json()["id"]
    worker = processes.worker(**lease)
    wait_for(lambda: _job(client, job_id)["step"] >= 1, 240, "two ranks training")
    assert len(_processes_of(job_id)) == 3  # the torchrun agent and its two ranks

    os.kill(worker.pid, signal.SIGSTOP)  # it stops renewing the lease; its ranks are not stopped
    wait_for(lambda: _processes_of(job_id) == [], 30, "the ranks to end themselves")
    os.kill(worker.pid, signal.SIGCONT)
    # The ranks ended for the lease (not a crash): the job goes back to the queue from its checkpoint, and this
    # worker, which holds no lease any more, takes it again.
    again = wait_for(lambda: (j := _job(client, job_id))["attempt"] == 2 and j["step"] >= 2 and j, 240, "attempt 2")
    assert again["resume_from"] is not None and again["error"] is None, processes.log_text()
    logs = "".join(log.read_text(errors="replace") for log in processes.logs.iterdir())  # whole, not tails
    assert "could not renew this job's lease in time" in logs
    # Settled by whichever notices first: the woken worker, from its ranks' exit code, or the API's lost-job reaper.
    assert "the lease could not be renewed in time; the training process ended" in logs or (
        f"job {job_id} lost its worker; now queued" in logs
    )

    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_for(lambda: _processes_of(job_id) == [], 30, "the ranks to die with the worker")
