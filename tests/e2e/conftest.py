"""The process harness: real API (uvicorn) and worker processes for one test, all stopped at its end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, cache_dir
from tests.offline import NoNetwork


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(project: Path, models_root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FORGE_PROJECT_DIR=str(project),
        FORGE_MODEL_DIRS=json.dumps([str(models_root)]),
        FORGE_CACHE_DIR=str(cache_dir()),
        FORGE_WORKER_POLL_SECONDS="0.2",
        FORGE_HEARTBEAT_SECONDS="0.5",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    env.pop("FORGE_API_TOKEN", None)
    env.update(extra)
    return env


class Processes:
    """Real API and worker processes for one test; all stopped at the end."""

    def __init__(self, project: Path, models_root: Path, logs: Path) -> None:
        self.project = project
        self.models_root = models_root
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def api(self, **env: str) -> str:
        port = free_port()
        self._spawn(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:app_factory", "--port", str(port)],
            "api",
            process_env(self.project, self.models_root, **env),
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the API did not start:\n{self.log_text()}")

    def worker(self, *args: str, prefix: Sequence[str] = (), **env: str) -> subprocess.Popen[bytes]:
        """A worker; `prefix` runs it under another command (e.g. `unshare -n`, no network)."""
        env_vars = process_env(self.project, self.models_root, **env)
        return self._spawn([*prefix, sys.executable, "-m", "worker", *args], "worker", env_vars)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def log_text(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.iterdir()))


@pytest.fixture
def processes(project: Path, models_root: Path, tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(project, models_root, logs)
    yield procs
    procs.stop_all()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def offline(tmp_path: Path) -> NoNetwork:
    """A worker with no network: run it with `prefix=offline.prefix, **offline.env` (tests/offline.py)."""
    return NoNetwork(tmp_path / "offline", ROOT)
