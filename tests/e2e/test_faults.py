"""Faults around the worker, with real processes: a stalled or killed worker, a shutdown racing a cancel, a locked
database and a full disk. Nothing trains a job twice at once, no job stays `running`, the API never answers 500."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for


def _job(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/api/training/jobs/{job_id}").json()


def _training_process(worker_pid: int) -> int:
    """The worker's training process (multiprocessing's spawn child; the resource tracker is the other child)."""
    for pid in Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split():
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError(f"worker {worker_pid} has no training process")


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie (it runs no code and writes nothing; its parent may be stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def _log(processes: Processes, index: int) -> str:
    """The output of the `index`-th process started (its stdout and stderr, its training process's too)."""
    return next(processes.logs.glob(f"*-{index}.log")).read_text(errors="replace")


@pytest.mark.serial  # ends within 3 s
def test_a_stalled_worker_loses_the_job_and_its_training_process_ends_first(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    lease = {"FORGE_LEASE_SECONDS": "3"}
    client = httpx.Client(base_url=processes.api(**lease), timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=12, save_steps=3)).json()["id"]
    stalled = processes.worker("--worker-id", "stalled", **lease)
    run = project / "runs" / job_id
    wait_for(lambda: (run / "outputs/checkpoint-3/trainer_state.json").is_file(), 180, "a checkpoint")
    standby = processes.worker("--worker-id", "standby", **lease)
    trainer = _training_process(stalled.pid)

    os.kill(stalled.pid, signal.SIGSTOP)  # the main process only: it stops renewing, its trainer does not notice
    stopped_at = time.monotonic()
    wait_for(lambda: _gone(trainer), 10, "the stalled worker's training process to end", interval=0.02)
    ended_at = time.time()
    # Within the lease (3 s from the last renewal), before the database lets anyone else take the job.
    assert time.monotonic() - stopped_at < 3
    taken = wait_for(lambda: (j := _job(client, job_id))["worker_id"] == "standby" and j, 60, "the standby's claim")
    assert taken["attempt"] == 2 and taken["resume_from"] is not None
    assert datetime.fromisoformat(taken["started_at"]).timestamp() > ended_at  # only one trainer after the move

    wait_for(lambda: _job(client, job_id)["status"] == "succeeded", 300, "the standby to finish", interval=0.5)
    done = _job(client, job_id)
    assert (done["attempt"], done["step"], done["error"]) == (2, 12, None)
    assert f"resuming from {run / taken['resume_from']}" in (run / "logs/training.log").read_text()
    assert "could not renew this job's lease in time" in _log(processes, 1)
    files = _files(run)

    # The stalled worker wakes up: it finds the job gone, changes nothing, and goes on with the next one.
    os.kill(stalled.pid, signal.SIGCONT)
    wait_for(lambda: f"job {job_id}: succeeded" in _log(processes, 1), 30, "the stalled worker to settle")
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(timeout=60) == 0
    assert _files(run) == files and _job(client, job_id) == done
    next_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2)).json()["id"]
    wait_for(lambda: _job(client, next_id)["status"] == "succeeded", 180, "the next job", interval=0.5)
    assert _job(client, next_id)["worker_id"] == "stalled" and stalled.poll() is None


@pytest.mark.serial  # dies within 2 s
def test_a_killed_workers_training_process_dies_with_it(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    client = httpx.Client(base_url=processes.api(), timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    worker = processes.worker()
    wait_for(lambda: _job(client, job_id)["step"] >= 2, 180, "training to start")
    trainer = _training_process(worker.pid)

    os.kill(worker.pid, signal.SIGKILL)  # the main process only, not its process group
    killed_at = time.monotonic()
    wait_for(lambda: _gone(trainer), 2, "the training process to die with its worker", interval=0.02)
    assert time.monotonic() - killed_at < 2


def test_a_cancel_then_a_shutdown_ends_cancelled(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    client = httpx.Client(base_url=processes.api(), timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000, save_steps=2)).json()["id"]
    # A slow heartbeat: the shutdown reaches the trainer before the worker has seen the cancel.
    worker = processes.worker(FORGE_HEARTBEAT_SECONDS="10")
    wait_for(lambda: _job(client, job_id)["step"] >= 2, 180, "training to start")

    assert client.post(f"/api/training/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    assert "asking the trainer to stop (shutdown)" in _log(processes, 1)  # the path that used to re-queue it
    job = _job(client, job_id)
    assert (job["status"], job["cancel_requested"], job["error"]) == ("cancelled", True, None)
    assert job["finished_at"] is not None

    # No worker runs it again.
    assert processes.worker("--exit-when-idle").wait(timeout=120) == 0
    assert _job(client, job_id)["status"] == "cancelled" and _job(client, job_id)["attempt"] == 1


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


@pytest.mark.serial  # a 503 within 15 s
def test_a_database_locked_for_40s_is_ridden_out(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    client = httpx.Client(base_url=processes.api(), timeout=60)  # the default lease: 60 s
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    worker = processes.worker()
    wait_for(lambda: _job(client, job_id)["step"] >= 2, 180, "training to start")
    trainer = _training_process(worker.pid)

    # Another process (a backup, a long query) holds the write lock for 40 s.
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(project / ".factory/forge.db"), "40"], stdout=subprocess.PIPE
    )
    assert locker.stdout is not None and locker.stdout.readline() == b"locked\n"
    locked_at = time.time()
    try:
        asked = time.monotonic()
        refused = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
        assert refused.json()["code"] == "database_busy" and refused.json()["param"] is None
        assert time.monotonic() - asked < 15  # the database's busy timeout, not the client's patience
        assert client.get("/api/training").status_code == 200  # reads go on (WAL)
        assert client.get("/api/training/jobs").status_code == 200
        assert locker.wait(timeout=60) == 0
    finally:
        locker.kill()
    unlocked_at = time.time()

    # The worker rode it out: the same training process trained on through the lock, the job is still its own.
    wait_for(lambda: "the database answers again" in _log(processes, 1), 30, "the worker to reach the database")
    assert worker.poll() is None and not _gone(trainer) and _training_process(worker.pid) == trainer
    metrics = [
        json.loads(line.split("metrics ", 1)[1])
        for line in (project / "runs" / job_id / "logs/training.log").read_text().splitlines()
        if " metrics {" in line
    ]
    assert any(locked_at + 5 < m["time"] < unlocked_at - 5 for m in metrics), "no training step during the lock"
    trained = max(m["step"] for m in metrics)
    wait_for(lambda: _job(client, job_id)["step"] >= trained, 30, "the steps trained meanwhile to be recorded")
    assert (_job(client, job_id)["status"], _job(client, job_id)["attempt"]) == ("running", 1)
    client.post(f"/api/training/jobs/{job_id}/cancel")
    wait_for(lambda: _job(client, job_id)["status"] == "cancelled", 60, "the cancel")


@contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own at `folder`, to fill up (needs root, as in the CI container)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill up (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Fill `folder`'s filesystem to the last page; returns the file doing it (delete it to free the space)."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 4096):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_fails_the_job_disk_full_and_the_worker_goes_on(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    with _tmpfs(project / "runs", "256m") as runs:
        client = httpx.Client(base_url=processes.api(), timeout=60)
        config = tiny_config(tiny_model_dir, max_steps=5000, save_steps=2)
        job_id = client.post("/api/training", json=config).json()["id"]
        worker = processes.worker()
        wait_for(lambda: (runs / job_id / "outputs/checkpoint-2/trainer_state.json").is_file(), 180, "a checkpoint")
        filler = _fill(runs)  # the disk fills up while the job trains

        wait_for(lambda: _job(client, job_id)["status"] == "failed", 120, "the job to fail")
        error = _job(client, job_id)["error"]
        assert error["code"] == "disk_full", error
        # Where, and how much to free.
        assert str(runs / job_id) in error["message"] and f"mounted at {runs}" in error["message"]
        assert "Free at least" in error["message"] and "checkpoint of it about" in error["message"]
        assert worker.poll() is None

        filler.unlink()
        next_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2)).json()["id"]
        wait_for(lambda: _job(client, next_id)["status"] == "succeeded", 180, "the next job", interval=0.5)
        assert worker.poll() is None


def test_the_api_answers_507_when_its_disk_is_full(
    processes: Processes, project: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    database = {"FORGE_DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'forge.db'}"}  # on another disk
    with _tmpfs(project / ".factory", "1m") as factory, _tmpfs(project / "data/uploads", "1m") as uploads:
        client = httpx.Client(base_url=processes.api(**database), timeout=60)
        _fill(factory)
        _fill(uploads)

        refused = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2))  # the status file
        assert refused.status_code == 507, refused.text
        assert set(refused.json()) == {"code", "message", "param"} and refused.json()["code"] == "disk_full"
        row = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        upload = client.post(
            "/api/training/datasets",
            data={"model": str(tiny_model_dir)},
            files={"file": ("rows.jsonl", (json.dumps(row) + "\n").encode() * 2000, "application/jsonl")},
        )
        assert upload.status_code == 507, upload.text
        assert upload.json()["code"] == "disk_full" and "free space" in upload.json()["message"]
        assert not (uploads / "rows.jsonl").exists()
        assert client.get("/api/training").status_code == 200
