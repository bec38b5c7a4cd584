"""The real API as the benchmarks drive it: wait for it to answer, then submit a job and wait for its end."""

from __future__ import annotations

import time
from typing import Any

import httpx


def wait_for_api(base: str, tries: int = 60) -> None:
    """Until `GET /api/training` answers (every 0.5 s, at most `tries` times)."""
    for _ in range(tries):
        try:
            httpx.get(f"{base}/api/training", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)


def run_to_end(base: str, config: dict[str, Any]) -> dict[str, Any]:
    """Submit `config` and poll the job every second until it is neither queued nor running; the job's JSON."""
    job = httpx.post(f"{base}/api/training", json=config, timeout=60).json()
    if "id" not in job:
        raise RuntimeError(f"the job was refused: {job}")
    while (job := httpx.get(f"{base}/api/training/jobs/{job['id']}", timeout=30).json())["status"] in (
        "queued",
        "running",
    ):
        time.sleep(1)
    return dict(job)
