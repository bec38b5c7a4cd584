"""Two workers racing over one SQLite queue: every job is claimed and run exactly once."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for


def test_two_workers_run_each_of_20_jobs_once(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    base = processes.api()
    client = httpx.Client(base_url=base, timeout=60)
    # The claims are the point here, not the scores: no baseline or evaluate step in these 20 jobs.
    config = tiny_config(tiny_model_dir, max_steps=1) | {"evaluation": {"baseline": False, "evaluate": False}}
    ids = [client.post("/api/training", json=config).json()["id"] for _ in range(20)]
    workers = [processes.worker("--exit-when-idle", "--worker-id", f"racer-{i}") for i in range(2)]

    def all_done() -> bool:
        page = client.get("/api/training/jobs", params={"limit": 50}).json()["items"]
        return all(job["status"] == "succeeded" for job in page)

    wait_for(all_done, 600, "all 20 jobs", interval=1.0)
    for worker in workers:
        assert worker.wait(timeout=60) == 0

    jobs = client.get("/api/training/jobs", params={"limit": 50}).json()["items"]
    assert sorted(job["id"] for job in jobs) == sorted(ids)
    assert all(job["attempt"] == 1 for job in jobs), "a job was claimed twice"
    owners = {job["worker_id"] for job in jobs}
    assert owners == {"racer-0", "racer-1"}, f"both workers should have taken jobs: {owners}"
    # Each run folder holds exactly one training run.
    for job_id in ids:
        log = (project / "runs" / job_id / "logs" / "training.log").read_text()
        assert len(re.findall(r"phase: training", log)) == 1
