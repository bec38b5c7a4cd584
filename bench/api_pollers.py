"""API latency and throughput under polling, while a real worker trains and writes progress.

Starts the real API (`python -m app`) and a real worker on a temporary project, submits a long job on a tiny
random-weight Gemma 3 (`logging_steps: 1`, so progress changes all the time), then runs N pollers per endpoint.
A poller is what the Forge UI's TrainingProgress.tsx is: one keep-alive connection asking once a second
(`--interval`), start times spread over the first interval. The client is raw asyncio HTTP/1.1, so that on a
2-core machine the measuring costs as little CPU as possible.

    python bench/api_pollers.py                      # 1, 50 and 500 pollers, 20 s each, both endpoints
    python bench/api_pollers.py --pollers 500 --seconds 30 --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.shapes import build  # noqa: E402


async def _poller(host: str, port: int, path: str, interval: float, start: float, end: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n".encode()
    tick = start
    try:
        while True:
            now = time.perf_counter()
            if tick > now:
                await asyncio.sleep(tick - now)
            if time.perf_counter() >= end:
                break
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            tick = max(tick + interval, time.perf_counter())
    finally:
        writer.close()
    return {"latencies": latencies, "errors": errors}


async def _run_pollers(host: str, port: int, path: str, count: int, interval: float, seconds: float) -> dict[str, Any]:
    begin = time.perf_counter() + 0.5
    end = begin + seconds
    tasks = [_poller(host, port, path, interval, begin + interval * i / count, end) for i in range(count)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(x for r in results if isinstance(r, dict) for x in r["latencies"])
    failures = sum(1 for r in results if isinstance(r, BaseException))
    errors = sum(r["errors"] for r in results if isinstance(r, dict)) + failures
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else latencies * 99
    return {
        "pollers": count,
        "path": path,
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "errors": errors,
    }


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pollers", type=int, nargs="+", default=[1, 50, 500])
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per case")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between one poller's requests")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from app import embedded
    from app.demo_data import write_splits

    cache = Path(os.environ.get("FORGE_CACHE_DIR", Path.home() / ".cache" / "forge-trainer"))
    work = Path(tempfile.mkdtemp(prefix="forge-bench-api-"))
    project, models = work / "project", work / "models"
    write_splits(project / "data")
    model = build("tiny", models / "tiny", embedded.tokenizer_dir(cache))
    env = dict(
        os.environ,
        FORGE_PROJECT_DIR=str(project),
        FORGE_MODEL_DIRS=json.dumps([str(models)]),
        FORGE_CACHE_DIR=str(cache),
        FORGE_PORT=str(args.port),
        HF_HUB_OFFLINE="1",
    )
    env.pop("FORGE_API_TOKEN", None)
    logs = [(work / name).open("wb") for name in ("api.log", "worker.log")]
    procs = [
        subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=logs[1], stderr=subprocess.STDOUT),
    ]
    base = f"http://127.0.0.1:{args.port}"
    try:
        _wait(f"{base}/api/training")
        config = {
            "model": {"name": str(model), "max_seq_length": 256},
            "lora": {"r": 4, "lora_alpha": 8, "use_gradient_checkpointing": False},
            "training": {"per_device_train_batch_size": 2, "max_steps": 1_000_000, "logging_steps": 1},
            "save": {"merged_path": None, "gguf_path": None},
            "evaluation": {"baseline": False, "evaluate": False},  # straight to training steps
            "backend": "transformers",
        }
        job = httpx.post(f"{base}/api/training", json=config, timeout=30).json()
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/api/training", timeout=5).json()["step"] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the job did not start training; logs in {work}")
            time.sleep(0.5)
        rows = []
        for path in ("/api/training", f"/api/training/jobs/{job['id']}"):
            for count in args.pollers:
                step_before = httpx.get(f"{base}/api/training", timeout=5).json()["step"]
                row = asyncio.run(_run_pollers("127.0.0.1", args.port, path, count, args.interval, args.seconds))
                step_after = httpx.get(f"{base}/api/training", timeout=5).json()["step"]
                row["training_steps_meanwhile"] = step_after - step_before
                rows.append(row)
                print(json.dumps(row), flush=True)
        httpx.post(f"{base}/api/training/cancel", timeout=30)
        result = {"cpus": os.cpu_count(), "interval_s": args.interval, "seconds": args.seconds, "rows": rows}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
