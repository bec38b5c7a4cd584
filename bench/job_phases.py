"""Where a whole job's time goes: the spec's standard config as a user posts it, through the real API and worker.

Three jobs on one worker: a cold one; a second on the same warm worker (same base model, other training data; with
`--test-rows 40,200` also another test split of 200 rows, so its baseline is computed, otherwise reused); a third
after the worker is restarted (compile caches warm on disk), on the first split.
Each row is read from the job's own phase timestamps (`result.phase_seconds`); `whole/training` is the job's
wall time from submission to its end over its training phase, the issue's ratio.

    python bench/job_phases.py --shape gemma3-4b --test-rows 40 --json 4b-40.json     # on the GPU machine
    python bench/job_phases.py --shape gemma3-270m --test-rows 40,200
    python bench/job_phases.py --shape tiny --backend transformers --steps 2 --test-rows 4 --gguf none  # CPU try
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _start(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_job(base: str, project: Path, config: dict[str, Any], label: str, prune: bool) -> dict[str, Any]:
    from bench.service import run_to_end

    submitted = time.time()
    job = run_to_end(base, config)
    if job["status"] != "succeeded":
        raise RuntimeError(f"{label}: {job['status']}: {job.get('error')}")
    result = job["result"]
    seconds = result["phase_seconds"]
    whole = _when(job["finished_at"]) - submitted
    run = project / "runs" / job["id"]
    metrics = run / "metrics"
    stats = json.loads((metrics / "training-stats.json").read_text())
    baseline = json.loads((metrics / "baseline.json").read_text()) if (metrics / "baseline.json").is_file() else {}
    first_step = next((e["time"] for e in stats.get("log_history", []) if "time" in e), None)
    evaluated = metrics / "evaluation.json"
    decoding = {  # a reused baseline's is its job's
        "baseline": baseline.get("decoding"),
        "evaluate": json.loads(evaluated.read_text()).get("decoding") if evaluated.is_file() else None,
    }
    if prune:  # a 4B job leaves ~13 GB of merged model and GGUF: three of them fill a 64 GiB disk
        for path in (*run.glob("models/merged*"), *run.rglob("*.gguf")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {
        "job": label,
        "id": job["id"],
        "whole_s": round(whole, 1),
        "phases_s": seconds,
        "training_s": seconds.get("training"),
        "whole_over_training": round(whole / seconds["training"], 2) if seconds.get("training") else None,
        "submit_to_first_logged_step_s": round(first_step - submitted, 1) if first_step else None,
        "tokens_per_second": result.get("tokens_per_second"),
        "baseline_reused_from": (baseline.get("reused_from") or {}).get("job_id"),
        "model_kept_from": result.get("model_kept_from"),
        "peak_gpu_memory_gib": result.get("peak_gpu_memory_gib"),
        "decoding": decoding,  # generated tokens, seconds in generate and in the answer loss, per scoring stage
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="gemma3-270m", help="gemma3-270m, gemma3-4b, llama3.1-8b, tiny")
    parser.add_argument("--test-rows", default="40", help="rows of the test split; N,M: the second job's is M rows")
    parser.add_argument("--steps", type=int, default=60, help="the spec's standard config trains 60 steps")
    parser.add_argument("--backend", default="unsloth")
    parser.add_argument("--gguf", default="Q8_0", help="a GGUF type to export and check, or none")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--jobs", default="cold,warm,restarted", help="which jobs, in this order (cold comes first)")
    parser.add_argument("--prune", action="store_true", help="delete each job's merged model and GGUF files after it")
    a = parser.parse_args()

    from app import embedded
    from app.demo_data import write_splits
    from bench.shapes import build

    work = (a.work or Path(tempfile.mkdtemp(prefix="forge-bench-phases-"))).resolve()
    project = work / "project"
    cache = Path(os.environ.get("FORGE_CACHE_DIR", Path.home() / ".cache" / "forge-trainer"))
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(a.shape, work / "models" / a.shape, embedded.tokenizer_dir(cache), device=device)
    counts = [int(n) for n in str(a.test_rows).split(",")]
    write_splits(project / "data", sizes=(480, 24, counts[0]))
    if len(counts) > 1:  # the second job's own test split
        write_splits(work / "second", sizes=(480, 24, counts[1]))
        shutil.copy(work / "second/splits/test.jsonl", project / "data/second-test.jsonl")
    train = (project / "data/splits/train.jsonl").read_text().splitlines()
    (project / "data/other-train.jsonl").write_text("\n".join(train[240:] + train[:240]) + "\n")
    env = dict(
        os.environ,
        FORGE_PROJECT_DIR=str(project),
        FORGE_MODEL_DIRS=json.dumps([str(model.parent)]),
        FORGE_PORT=str(a.port),
        FORGE_WORKER_POLL_SECONDS="0.2",
    )
    # The spec's standard config (the config's defaults), on this shape, with a GGUF file checked in llama.cpp.
    config: dict[str, Any] = {
        "model": {"name": str(model), "load_in_4bit": device == "cuda"},
        "training": {"max_steps": a.steps},
        "evaluation": {"glossary_path": "data/glossary.json"},
        "save": {"gguf_quantization": a.gguf} if a.gguf != "none" else {"gguf_path": None},
        "backend": a.backend,
    }
    summary = {"shape": a.shape, "test_rows": a.test_rows, "steps": a.steps, "backend": a.backend, "gguf": a.gguf}
    if device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name()
    api = _start("app", env, work / "api.log")
    worker = _start("worker", env, work / "worker.log")
    rows = []
    try:
        from bench.service import wait_for_api

        base = f"http://127.0.0.1:{a.port}"
        wait_for_api(base, tries=120)
        other = config | {"dataset": {"path": "data/other-train.jsonl"}}
        if len(counts) > 1:
            other["evaluation"] = config["evaluation"] | {"test_path": "data/second-test.jsonl"}
        reseeded = config | {"training": {"max_steps": a.steps, "seed": 7}}
        second = "warm worker, other data" + (f", {counts[1]}-row test split" if len(counts) > 1 else "")
        known = {
            "cold": ("cold", config, False),
            "warm": (second, other, False),
            "restarted": ("restarted worker", reseeded, True),
        }
        for label, posted, restart in [known[name] for name in a.jobs.split(",")]:
            if restart:
                _stop(worker)
                worker = _start("worker", env, work / "worker.log")
            rows.append(run_job(base, project, posted, label, a.prune))
            print("JOB PHASES", json.dumps({**summary, **rows[-1]}), flush=True)  # each as it ends: a run may be cut
    finally:
        _stop(worker)
        _stop(api)
    if a.json:
        a.json.write_text(json.dumps({**summary, "jobs": rows}, indent=2))


if __name__ == "__main__":
    main()
