"""`forge-demo`: the whole service on this machine, with a bundled job you can watch.

Starts the API (uvicorn) and a worker as separate processes on a demo project, writes the bundled sample
dataset to data/splits/, submits a job on the embedded Gemma 3 270M (baseline -> finetune -> evaluate ->
gates), shows its progress as the Forge UI would see it and the fine-tuned model against its baseline,
then leaves the API serving until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.demo_data import write_splits

DEMO_CONFIG: dict[str, Any] = {
    "model": {"name": "embedded:gemma-3-270m", "max_seq_length": 256},
    # On a CPU, recomputing activations costs more time than the memory it saves.
    "lora": {"r": 8, "lora_alpha": 16, "use_gradient_checkpointing": False},
    "training": {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 5,
        "max_steps": 60,
        "learning_rate": 2e-4,
        "logging_steps": 1,
    },
    "dataset": {"path": "data/splits/train.jsonl", "chat_template": "gemma-3"},
    "save": {"merged_path": "models/checkpoints/merged", "gguf_path": None},
    # The test split's answers are at most 20 tokens: 32 leaves room to see the base model ramble.
    "evaluation": {"max_new_tokens": 32, "batch_size": 8, "glossary_path": "data/glossary.json"},
    # The base model never answers in the expected sentence (its exact match is 0), so the margin is in points.
    "gates": {"metric": "exact_match", "improvement": "absolute", "min_improvement": 0.2},
}
SHOWN_METRICS = ("exact_match", "token_f1", "chrf", "rouge_l", "localization_score", "test_loss", "perplexity")


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "?"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _line(status: dict[str, Any]) -> str:
    progress = status.get("evaluation")
    if status["phase"] in ("baseline", "evaluate") and progress and progress["stage"] == status["phase"]:
        return f"[{status['phase']}] {progress['done']}/{progress['total']} test answers"
    if status["phase"] != "training" or not status["total_steps"]:
        return f"[{status['status']}] {status['phase']}"
    loss = "-" if status["loss"] is None else f"{status['loss']:.4f}"
    lr = "-" if status["learning_rate"] is None else f"{status['learning_rate']:.2e}"
    return (
        f"[training] step {status['step']}/{status['total_steps']}  epoch {status['epoch']}/{status['total_epochs']}"
        f"  loss {loss}  lr {lr}  eta {_fmt_seconds(status['eta_seconds'])}"
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _comparison(result: dict[str, Any]) -> str:
    """The base model and the fine-tuned one on the same test split, metric by metric."""
    before = (result.get("baseline") or {}).get("metrics", {})
    after = (result.get("evaluation") or {}).get("metrics", {})
    if not (before or after):
        return ""
    examples = (result.get("evaluation") or result.get("baseline") or {}).get("examples")
    lines = [f"\non the test split ({examples} examples)   baseline   fine-tuned"]
    lines += [f"  {name:<28} {_number(before.get(name)):>9} {_number(after.get(name)):>12}" for name in SHOWN_METRICS]
    return "\n".join(lines)


def _gates(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    lines = ["\ngates" + (" (required)" if report["required"] else "")]
    lines += [f"  {gate['name']:<22} {gate['status']:<8} {gate['message']}" for gate in report["gates"]]
    return "\n".join(lines)


def _wait_for_api(base: str, api: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"the API exited with code {api.returncode}; is port {base.rsplit(':', 1)[1]} free?")
        try:
            httpx.get(f"{base}/openapi.json", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("the API did not start")


def main() -> None:
    parser = argparse.ArgumentParser(prog="forge-demo", description=__doc__)
    parser.add_argument("--project", default=os.environ.get("FORGE_PROJECT_DIR", "demo-project"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FORGE_PORT", "8000")))
    parser.add_argument("--exit", action="store_true", help="stop the API when the job ends instead of serving")
    args = parser.parse_args()

    project = Path(args.project).resolve()
    data = project / "data"
    if not all((data / name).exists() for name in ("splits/train.jsonl", "splits/test.jsonl", "glossary.json")):
        write_splits(data)
        print(f"wrote the sample dataset to {project / 'data' / 'splits'}")
    env = dict(os.environ, FORGE_PROJECT_DIR=str(project), PYTHONUNBUFFERED="1")
    (project / "logs").mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    api_log = (project / "logs" / "api.log").open("ab")
    worker_log = (project / "logs" / "worker.log").open("ab")
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:app_factory", "--port", str(args.port)],
        env=env,
        stdout=api_log,
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        _wait_for_api(base, api)
        print(f"API on {base} (docs: {base}/docs); worker log: {project / 'logs' / 'worker.log'}")
        client = httpx.Client(base_url=base, timeout=30)
        headers = (
            {"Authorization": f"Bearer {os.environ['FORGE_API_TOKEN']}"} if os.environ.get("FORGE_API_TOKEN") else {}
        )
        response = client.post("/api/training", json=DEMO_CONFIG, headers=headers)
        response.raise_for_status()
        job_id = response.json()["id"]
        print(f"submitted job {job_id}: {DEMO_CONFIG['model']['name']} on {DEMO_CONFIG['dataset']['path']}")
        print("(the first run converts the embedded model once: about two minutes)")
        last: tuple[str, int, int] | None = None
        while True:
            status = client.get("/api/training", headers=headers).json()
            mine = status["job_id"] == job_id
            # One line per phase change, step or batch of test answers; a step's loss arrives just after it.
            answered = (status.get("evaluation") or {}).get("done", 0)
            key = (status["phase"], status["step"], answered) if mine else ("queued", 0, 0)
            if key != last and (not mine or status["phase"] != "training" or status["loss"] is not None):
                print(_line(status) if mine else "[queued]", flush=True)
                last = key
            if status["job_id"] == job_id and status["status"] in ("succeeded", "failed", "cancelled"):
                break
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with code {worker.returncode}; see {worker_log.name}")
            time.sleep(1)
        job = client.get(f"/api/training/jobs/{job_id}", headers=headers).json()
        if job["status"] != "succeeded":
            print(f"job {job['status']}: {job['error']}")
        else:
            result = job["result"]
            print(
                f"done: {result['steps']} steps in {_fmt_seconds(result['train_runtime_seconds'])}, "
                f"final loss {result['final_loss']:.4f}, {result['tokens_per_second']} tokens/s ({result['backend']})"
            )
            items = client.get(f"/api/training/jobs/{job_id}/artifacts", headers=headers).json()["items"]
            for item in items:
                print(f"  {item['kind']:<8} {item['bytes']:>12,}  {project / 'runs' / job_id / item['name']}")
            print(_comparison(result))
            print(_gates(job["gates"]))
        if args.exit:
            return
        print(f"\nThe API keeps serving on {base} (try: curl {base}/api/training). Ctrl-C stops it.")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (worker, api):
            if proc.poll() is None:
                proc.terminate()
        for proc in (worker, api):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
