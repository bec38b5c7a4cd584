"""The service end to end: real uvicorn, a real worker process, real training of a tiny Gemma 3."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for


def test_submit_train_poll_and_download(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)

    idle = client.get("/api/training").json()
    assert idle["running"] is False and idle["step"] == 0 and idle["job_id"] is None

    created = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=12, logging_steps=1))
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert created.json()["status"] == "queued"

    # Poll as TrainingProgress.tsx does; record every distinct (step, loss) seen.
    seen: list[dict] = []

    def finished() -> bool:
        status = client.get("/api/training").json()
        if not seen or (status["step"], status["loss"]) != (seen[-1]["step"], seen[-1]["loss"]):
            seen.append(status)
        return status["status"] in ("succeeded", "failed", "cancelled")

    wait_for(finished, 240, "the job to finish", interval=0.1)
    final = client.get(f"/api/training/jobs/{job_id}").json()
    assert final["status"] == "succeeded", (final["error"], processes.log_text())

    running = [s for s in seen if s["running"]]
    steps = [s["step"] for s in running]
    assert any(0 < s < 12 for s in steps), f"never saw a step in progress: {steps}"
    assert steps == sorted(steps)
    losses = {s["loss"] for s in seen if s["loss"] is not None}
    assert len(losses) >= 2, "loss never changed while polling"
    assert all(s["total_steps"] in (0, 12) for s in seen)

    status = client.get("/api/training").json()
    assert status["running"] is False and status["step"] == 12 and status["total_steps"] == 12
    assert status["job_id"] == job_id and status["error"] is None and status["eta_seconds"] == 0
    # The status file holds the same flat object as the API (the worker writes it just after the database).
    status_file = project / ".factory" / "training-status.json"
    wait_for(lambda: json.loads(status_file.read_text()) == status, 10, "the status file to match the API")

    assert final["backend"] == "transformers" and final["attempt"] == 1
    assert final["result"]["steps"] == 12 and final["result"]["data"]["examples"] == 48

    # Artifacts: the spec's layout, listed with sha256, downloadable, and a LoRA that PEFT loads.
    listing = client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]
    names = {a["name"]: a for a in listing}
    for name, kind in [
        ("models/checkpoints/lora/adapter_config.json", "lora"),
        ("models/checkpoints/lora/adapter_model.safetensors", "lora"),
        ("logs/training.log", "log"),
        ("metrics/training-stats.json", "metrics"),
    ]:
        assert names[name]["kind"] == kind
    weights = names["models/checkpoints/lora/adapter_model.safetensors"]
    body = client.get(f"/api/training/jobs/{job_id}/artifacts/{weights['name']}").content
    assert len(body) == weights["bytes"] and hashlib.sha256(body).hexdigest() == weights["sha256"]
    part = client.get(f"/api/training/jobs/{job_id}/artifacts/{weights['name']}", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == body[:100]  # large files resume with Range requests

    lora_dir = project / "runs" / job_id / "models" / "checkpoints" / "lora"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_dir)
    assert model.peft_config["default"].r == 4

    log_text = (project / "runs" / job_id / "logs" / "training.log").read_text()
    assert "phase: training" in log_text and '"loss"' in log_text


def test_worker_keeps_its_training_process_between_clean_jobs(
    processes: Processes, tiny_model_dir: Path, models_root: Path
) -> None:
    """Jobs after a clean one start warm (no imports, kernels compiled, the model loaded); a failure gets the next
    job a new process. FORGE_WORKER_PRELOAD has the model loaded before the first job is claimed."""
    broken = models_root / "no-weights"
    broken.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # no weights: loading fails
        (broken / name).write_text((tiny_model_dir / name).read_text())
    base = processes.api()
    client = httpx.Client(base_url=base, timeout=60)
    configs = [
        tiny_config(tiny_model_dir),
        tiny_config(broken),
        tiny_config(tiny_model_dir),
        tiny_config(tiny_model_dir),
    ]
    ids = [client.post("/api/training", json=c).json()["id"] for c in configs]
    preload = processes.project / "preload.json"  # the config the jobs to come use: its model and lora sections
    preload.write_text(json.dumps(tiny_config(tiny_model_dir)))
    processes.worker("--exit-when-idle", FORGE_WORKER_PRELOAD=str(preload))

    def all_done() -> list[dict] | None:
        found = [client.get(f"/api/training/jobs/{job_id}").json() for job_id in ids]
        return found if all(j["status"] in ("succeeded", "failed") for j in found) else None

    first, failed, after_failure, warm = wait_for(all_done, 300, "four jobs")
    assert [j["status"] for j in (first, failed, after_failure, warm)] == [
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
    ]
    assert failed["error"]["code"] == "model_not_found"
    assert (first["result"]["warm_start"], after_failure["result"]["warm_start"]) == (False, False)
    assert warm["result"]["warm_start"] is True
    # The model: pre-loaded for the first job, loaded again after the failure, then kept for the next job.
    kept_from = [job["result"]["model_kept_from"] for job in (first, after_failure, warm)]
    assert kept_from == ["preloaded", None, after_failure["id"]]
    for job in (first, warm):  # each job's log holds its own run only
        log_text = (processes.project / "runs" / job["id"] / "logs" / "training.log").read_text()
        assert log_text.count("phase: loading_model") == 1


def test_a_worker_imports_the_training_stack_before_its_first_job(processes: Processes, tiny_model_dir: Path) -> None:
    """FORGE_WORKER_START_AHEAD (on by default where the backend is Unsloth): the worker starts its training
    process at once and has it import transformers, TRL and datasets while no job waits; the first job runs there."""
    base = processes.api()
    processes.worker(FORGE_WORKER_START_AHEAD="true")
    started = wait_for(
        lambda: re.search(r"ahead of the first job \(pid (\d+)\): importing transformers", processes.log_text()),
        60,
        "the worker to start its training process",
    )
    pid = started.group(1)
    maps = Path(f"/proc/{pid}/maps")  # the libraries the process has loaded: datasets' Arrow, once it is imported
    wait_for(lambda: "libarrow" in maps.read_text(), 120, "the training process to import the training stack")

    client = httpx.Client(base_url=base, timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=2)).json()["id"]
    job = wait_for(
        lambda: (j := client.get(f"/api/training/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
        240,
        "the job",
    )
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    assert f"reusing the warm training process (pid {pid})" in processes.log_text()
    assert job["result"]["warm_start"] is False  # its first job: nothing compiled or loaded before it


def test_an_auto_batch_is_measured_reported_and_trained_with(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    """`per_device_train_batch_size: auto` over HTTP: the worker measures, reports its pick, and the trainer uses it."""
    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    config = tiny_config(tiny_model_dir, max_steps=3, save_steps=3)
    config["training"] |= {"per_device_train_batch_size": "auto", "effective_batch_size": 4}
    del config["training"]["gradient_accumulation_steps"]
    created = client.post("/api/training", json=config)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert created.json()["config"]["training"]["gradient_accumulation_steps"] == "auto"
    job = wait_for(
        lambda: (j := client.get(f"/api/training/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
        240,
        "the auto-batch job",
    )
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    picked = job["result"]["batch_size"]
    assert picked["auto"] is True and picked["device"] == "cpu" and picked["limit_gib"] > 0
    assert [t["batch"] for t in picked["trials"]] == [1, 2, 4] and all(t["fits"] for t in picked["trials"])
    assert (picked["per_device_train_batch_size"], picked["gradient_accumulation_steps"]) == (4, 1)
    run = project / "runs" / job_id
    assert json.loads((run / "metrics/batch-size.json").read_text()) == picked
    assert json.loads((run / "metrics/training-stats.json").read_text())["batch_size"] == picked
    # What the trainer really ran with, from its own checkpoint.
    state = json.loads((run / "outputs/checkpoint-3/trainer_state.json").read_text())
    assert state["train_batch_size"] == 4
    logged = (run / "logs/training.log").read_text()
    assert "per_device_train_batch_size auto: 4 (x 1 accumulation x 1 ranks = 4" in logged

    refused = client.post(
        "/api/training",
        json={**config, "training": {"per_device_train_batch_size": "auto", "gradient_accumulation_steps": 2}},
    )
    assert refused.status_code == 422 and "gradient_accumulation_steps to 'auto'" in refused.text
