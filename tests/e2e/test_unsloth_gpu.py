"""The Unsloth backend on a CUDA GPU, run by the real worker: 4-bit QLoRA on a Gemma 3 270M-shaped model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GPU_ONLY
from tests.e2e.conftest import Processes, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


pytestmark = GPU_ONLY


@pytest.fixture(scope="module")
def gemma3_270m_random(models_root: Path, tokenizer_dir: Path) -> Path:
    """Gemma 3 270M's real architecture with random weights, made on the GPU (no hub), and the real tokenizer."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    out = models_root / "gemma3-270m-random"
    config = Gemma3TextConfig(**json.loads((FIXTURES / "gemma-3-270m-config.json").read_text()))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Gemma3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def finished_job(client: httpx.Client, config: dict[str, Any], what: str) -> dict[str, Any]:
    """Submit a job and wait (Unsloth compiles for minutes on a cold machine) until it ends."""
    job_id = client.post("/api/training", json=config).json()["id"]

    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/api/training/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job: dict[str, Any] = wait_for(ended, 570, what, interval=0.5)
    return job


def test_worker_trains_with_unsloth(processes: Processes, project: Path, gemma3_270m_random: Path) -> None:
    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    config = {
        "model": {"name": str(gemma3_270m_random), "max_seq_length": 512, "load_in_4bit": True},
        "training": {
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "max_steps": 30,
            "save_steps": 10,
        },
        "save": {"gguf_path": None},
        # The baseline and evaluate steps in Unsloth's inference mode, then back to training mode.
        "evaluation": {"max_new_tokens": 16, "glossary_path": "data/glossary.json"},
        "backend": "unsloth",
    }
    job_id = client.post("/api/training", json=config).json()["id"]
    steps_seen: set[int] = set()

    def done() -> bool:
        status = client.get("/api/training").json()
        steps_seen.add(status["step"])
        return status["status"] in ("succeeded", "failed", "cancelled")

    wait_for(done, 540, "the Unsloth job", interval=0.5)
    job = client.get(f"/api/training/jobs/{job_id}").json()
    print("UNSLOTH JOB", json.dumps({k: job[k] for k in ("status", "backend", "step", "loss", "error")}))
    print("UNSLOTH RESULT", json.dumps({k: v for k, v in (job["result"] or {}).items()}))
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    assert job["backend"] == "unsloth" and job["step"] == 30
    result = job["result"]
    assert 0 < result["peak_gpu_memory_gib"] <= result["peak_gpu_memory_reserved_gib"] < 20  # this job's own peak
    assert list(result["phase_seconds"])[:2] == ["starting", "loading_model"]
    assert len(steps_seen) > 2
    run = project / "runs" / job_id
    assert (run / "models/checkpoints/lora/adapter_config.json").is_file()
    assert (run / "models/checkpoints/lora/adapter_model.safetensors").is_file()
    assert (run / "models/checkpoints/merged/config.json").is_file()
    assert (run / "outputs/checkpoint-30/optimizer.pt").is_file()  # resumable checkpoints under Unsloth too
    log = (run / "logs/training.log").read_text()
    print("UNSLOTH LOG TAIL", log[-3000:])
    from tests.e2e.test_evaluation import check_files_agree

    check_files_agree(run, job, client.get("/api/training").json(), examples=8)
    print("UNSLOTH GATES", json.dumps(job["gates"]))


def test_unsloth_job_survives_a_worker_shutdown(processes: Processes, project: Path, gemma3_270m_random: Path) -> None:
    """SIGTERM checkpoints the Unsloth job at the current step; the next worker resumes it to the end."""
    import signal

    base = processes.api()
    client = httpx.Client(base_url=base, timeout=60)
    config = {
        "model": {"name": str(gemma3_270m_random), "max_seq_length": 512, "load_in_4bit": True},
        "training": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 60},
        "save": {"gguf_path": None, "merged_path": None},
        "evaluation": {"max_new_tokens": 16},
        "backend": "unsloth",
    }
    job_id = client.post("/api/training", json=config).json()["id"]
    worker = processes.worker()
    wait_for(lambda: client.get(f"/api/training/jobs/{job_id}").json()["step"] >= 10, 400, "Unsloth steps")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    stopped = client.get(f"/api/training/jobs/{job_id}").json()
    print("UNSLOTH STOPPED", json.dumps({k: stopped[k] for k in ("status", "step", "resume_from")}))
    assert stopped["status"] == "queued" and stopped["resume_from"] == f"outputs/checkpoint-{stopped['step']}"

    processes.worker("--exit-when-idle").wait(timeout=400)
    done = client.get(f"/api/training/jobs/{job_id}").json()
    print("UNSLOTH RESUMED", json.dumps({k: done[k] for k in ("status", "step", "attempt", "loss", "error")}))
    assert done["status"] == "succeeded" and done["attempt"] == 2 and done["step"] == 60
    assert "baseline: kept from the first attempt" in (project / "runs" / job_id / "logs/training.log").read_text()


def test_unsloth_job_exports_lora_merged_and_a_q8_0_gguf_llama_cpp_loads(
    processes: Processes, project: Path, gemma3_270m_random: Path
) -> None:
    """Unsloth's save_pretrained_merged writes the merged folder; llama.cpp's converter (never Unsloth's
    save_pretrained_gguf, which needs the network) turns it into Q8_0, which llama.cpp then loads and chats with."""
    import llama_cpp

    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    config = {
        "model": {"name": str(gemma3_270m_random), "max_seq_length": 512, "load_in_4bit": True},
        "training": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 10},
        "save": {"gguf_quantization": "Q8_0"},
        "backend": "unsloth",
    }
    job = finished_job(client, config, "the Unsloth export job")
    job_id = job["id"]
    print("UNSLOTH EXPORT JOB", json.dumps({k: job[k] for k in ("status", "backend", "step", "error")}))
    print("UNSLOTH EXPORTS", json.dumps((job["result"] or {}).get("exports")))
    print("UNSLOTH QUANTIZATION", json.dumps((job["result"] or {}).get("quantization")))
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    assert job["backend"] == "unsloth"
    items = {a["name"]: a for a in client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]}
    for name, kind in (
        ("models/checkpoints/lora/adapter_model.safetensors", "lora"),
        ("models/checkpoints/merged/config.json", "merged"),
        ("models/quantized/model-Q8_0.gguf", "gguf"),
        ("metrics/quantization.json", "metrics"),
    ):
        assert items[name]["kind"] == kind, (name, items.get(name))
        print("UNSLOTH ARTIFACT", kind, items[name]["bytes"], items[name]["sha256"][:16], name)
    run = project / "runs" / job_id
    report = json.loads((run / "metrics/quantization.json").read_text())
    (verdict,) = report["files"]
    assert verdict["loaded"] and verdict["chat_template"], verdict

    llm = llama_cpp.Llama(model_path=str(run / "models/quantized/model-Q8_0.gguf"), n_ctx=512, verbose=False)
    try:
        out: Any = llm.create_chat_completion(
            messages=[{"role": "user", "content": "What is 5 + 3?"}], max_tokens=16, temperature=0.0
        )
        print("UNSLOTH GGUF", llm.metadata.get("general.architecture"), llm.metadata.get("general.file_type"))
        print("UNSLOTH GGUF ANSWER", json.dumps(out["choices"][0]["message"]["content"]), out["usage"])
        assert out["usage"]["prompt_tokens"] == 17  # <bos> and the gemma-3 turns, as the merged model would see them
    finally:
        llm.close()
    print("UNSLOTH EXPORT LOG TAIL", (run / "logs/training.log").read_text()[-2500:])


def test_unsloth_job_measures_an_auto_batch_and_trains_with_it(
    processes: Processes, project: Path, gemma3_270m_random: Path
) -> None:
    """`per_device_train_batch_size: auto` on the GPU: Unsloth's 4-bit model, its own forward and backward, peak
    memory from CUDA's allocator; the trainer then runs with the batch picked."""
    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    config = {
        "model": {"name": str(gemma3_270m_random), "max_seq_length": 512, "load_in_4bit": True},
        "training": {
            "per_device_train_batch_size": "auto",
            "effective_batch_size": 16,
            "max_steps": 3,
            "save_steps": 3,
        },
        "save": {"gguf_path": None, "merged_path": None},
        "evaluation": {"baseline": False, "evaluate": False},
        "backend": "unsloth",
    }
    job = finished_job(client, config, "the Unsloth auto-batch job")
    picked = (job["result"] or {}).get("batch_size")
    print("UNSLOTH AUTO BATCH", json.dumps({"status": job["status"], "error": job["error"], "batch_size": picked}))
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    # 16 rows of ~80 tokens on a 270M model fit any GPU Unsloth runs on many times over.
    assert picked["auto"] and picked["device"] == "cuda" and [t["batch"] for t in picked["trials"]] == [1, 2, 4, 8, 16]
    assert all(t["fits"] and 0 < t["peak_gib"] < picked["limit_gib"] for t in picked["trials"])
    assert (picked["per_device_train_batch_size"], picked["gradient_accumulation_steps"]) == (16, 1)
    state = json.loads((project / "runs" / job["id"] / "outputs/checkpoint-3/trainer_state.json").read_text())
    assert state["train_batch_size"] == 16


def test_unsloth_jobs_on_a_kept_model_train_as_on_a_fresh_one(
    processes: Processes, project: Path, gemma3_270m_random: Path
) -> None:
    """FORGE_WORKER_PRELOAD loads and wraps the 4-bit model before any job; three jobs then train on it (the
    merged export between them leaves it as it was): the third, on the first one's data and seed after two other
    trainings, has the first one's losses, from fresh adapters and a new optimizer."""
    config: dict[str, Any] = {
        "model": {"name": str(gemma3_270m_random), "max_seq_length": 512, "load_in_4bit": True},
        "training": {
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_steps": 8,
            "learning_rate": 1e-3,
        },
        "save": {"gguf_path": None},
        "evaluation": {"max_new_tokens": 8, "max_examples": 8},
        "backend": "unsloth",
    }
    preload = project / "preload.json"
    preload.write_text(json.dumps(config))
    rows = (project / "data/splits/train.jsonl").read_text().splitlines()
    (project / "data/other-train.jsonl").write_text("\n".join(reversed(rows)) + "\n")
    base = processes.api()
    processes.worker(FORGE_WORKER_PRELOAD=str(preload))
    client = httpx.Client(base_url=base, timeout=60)
    first = finished_job(client, config, "the first job")
    other = finished_job(client, config | {"dataset": {"path": "data/other-train.jsonl"}}, "the other job")
    again = finished_job(client, config, "the first job again")

    def losses(job: dict[str, Any]) -> list[float]:
        stats = json.loads((project / "runs" / job["id"] / "metrics/training-stats.json").read_text())
        return [entry["loss"] for entry in stats["log_history"] if "loss" in entry]

    for job in (first, other, again):
        result = job["result"] or {}
        print("KEPT JOB", json.dumps({"status": job["status"], "kept_from": result.get("model_kept_from")}))
        print("KEPT PHASES", json.dumps(result.get("phase_seconds")), "LOSSES", losses(job))
        assert job["status"] == "succeeded", (job["error"], processes.log_text())
        assert result["model_kept_from"] == "preloaded"
    assert len(losses(first)) == 8 and losses(other) != losses(first)
    assert losses(again) == pytest.approx(losses(first), rel=5e-3)
