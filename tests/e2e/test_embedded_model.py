"""The real embedded Gemma 3 270M, trained for a few steps by the real service (slow: minutes on a CPU):
baseline -> finetune -> evaluate -> gates, with the files, the job and the API telling one story; and
training.select_checkpoint best: a learning rate too high for the model makes the validation loss worst at the
last step, so the LoRA saved and merged is the earlier checkpoint's."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import cache_dir
from tests.e2e.conftest import Processes, wait_for
from tests.e2e.test_evaluation import check_files_agree

pytestmark = pytest.mark.slow


def test_embedded_model_trains_saves_and_answers(processes: Processes, project: Path) -> None:
    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    config = {
        "model": {"name": "embedded:gemma-3-270m", "max_seq_length": 256},
        "lora": {"use_gradient_checkpointing": False},
        "training": {
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_steps": 4,
            "eval_steps": 2,  # candidates at steps 2 and 4, scored by the validation loss the trainer computes
            "learning_rate": 1e-2,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
        },
        "gates": {"metric": "test_loss"},
        "save": {"gguf_path": None},
        # Short enough for CI's two cores: 4 test answers of at most 8 tokens, before and after training.
        "evaluation": {"max_examples": 4, "max_new_tokens": 8, "batch_size": 4, "glossary_path": "data/glossary.json"},
    }
    job_id = client.post("/api/training", json=config).json()["id"]
    wait_for(
        lambda: client.get(f"/api/training/jobs/{job_id}").json()["status"] not in ("queued", "running"),
        900,
        "the embedded-model job",
        interval=1.0,
    )
    job = client.get(f"/api/training/jobs/{job_id}").json()
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    assert job["step"] == 4 and job["loss"] is not None and job["result"]["exports"]["merged"]
    check_files_agree(project / "runs" / job_id, job, client.get("/api/training").json(), examples=4)
    baseline = job["result"]["baseline"]["metrics"]
    assert 0 < baseline["test_loss"] < 20 and baseline["perplexity"] > 1  # a real model, not a random one

    from app import embedded

    base_dir = embedded.model_dir(cache_dir())
    run = project / "runs" / job_id / "models" / "checkpoints"
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), run / "lora")
    assert lora.peft_config["default"].r == 8

    # select_checkpoint best (the default with a validation split): step 2 scored best, and is what was saved.
    report = json.loads((project / "runs" / job_id / "metrics/checkpoints.json").read_text())
    scores = {c["step"]: c["score"] for c in report["checkpoints"]}
    assert sorted(scores) == [2, 4] and scores[2] < scores[4], scores
    assert report["picked_step"] == 2 and report["picked_last"] is False
    assert job["result"]["checkpoint"] == {"picked_step": 2, "metric": "test_loss", "score": scores[2]}
    best = torch.load(project / "runs" / job_id / "outputs/best-checkpoint-lora.pt", weights_only=True)
    saved = load_file(run / "lora/adapter_model.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k].to(saved[k].dtype)) for k in saved)

    # The merged model loads on its own and is the picked checkpoint: the base model with the saved LoRA. (The
    # learning rate that makes step 4 worse also spoils Gemma's arithmetic, so no "5 + 3 = 8" check here.)
    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)
    inputs = tokenizer("Question: What is 5 + 3?\nAnswer:", return_tensors="pt")
    picked = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    picked = PeftModel.from_pretrained(picked, run / "lora").merge_and_unload().to(torch.float32)  # as export merges
    with torch.inference_mode():
        # bf16 rounding moves logits by some hundredths; the other checkpoint's LoRA would move them by far more.
        torch.testing.assert_close(merged(**inputs).logits, picked(**inputs).logits, atol=0.1, rtol=0.0)
    output = merged.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False).startswith(
        "<bos><start_of_turn>user\nHi<end_of_turn>"
    )
