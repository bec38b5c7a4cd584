"""The real embedded Gemma 3 270M, trained for a few steps by the real service (slow: minutes on a CPU):
baseline -> finetune -> evaluate -> gates, with the files, the job and the API telling one story; and
training.select_checkpoint best: a learning rate too high for the model makes the validation loss worst at the
last step, so the LoRA saved and merged is the earlier checkpoint's. Then a well-trained job is promoted, a job
on worse data fails no-regression against it with its flips listed, and release.json and reverify hold."""

from __future__ import annotations

import hashlib
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

    # The overfit job fails its gates and cannot be promoted; one trained well can. Promoted, it is the project's
    # accepted model, and a job on worse data (every answer moved to the next question) is then held to it on the
    # same test split: it fails no-regression, with its flips listed.
    refused = client.post(f"/api/training/jobs/{job_id}/promote")
    assert refused.status_code == 409 and refused.json()["code"] == "gate_failed", refused.text
    good = config | {
        "training": config["training"] | {"per_device_train_batch_size": 4, "max_steps": 6, "learning_rate": 2e-3}
    }
    accepted = finished(client, good, "the well-trained job")
    assert accepted["status"] == "succeeded", (accepted["error"], processes.log_text())
    accepted_id = accepted["id"]
    promoted = client.post(f"/api/training/jobs/{accepted_id}/promote", json={"note": "first cut", "by": "ci"})
    assert promoted.status_code == 200, promoted.text
    rows = [json.loads(line) for line in (project / "data/splits/train.jsonl").read_text().splitlines()]
    answers = [row["conversations"][-1]["content"] for row in rows]
    for row, answer in zip(rows, answers[1:] + answers[:1], strict=True):
        row["conversations"][-1]["content"] = answer
    (project / "data/worse.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    worse = finished(client, good | {"dataset": {"path": "data/worse.jsonl"}}, "the job on worse data")
    worse_id = worse["id"]
    assert worse["status"] == "succeeded" and worse["accepted_job_id"] == accepted_id, (worse["error"], worse)
    regression = next(g for g in worse["gates"]["gates"] if g["name"] == "no-regression")
    print("EMBEDDED NO-REGRESSION", json.dumps(regression))
    assert regression["status"] == "failed", regression
    assert regression["details"]["fine_tuned"] > regression["details"]["accepted"] * 1.02  # test_loss: lower is better
    comparison = json.loads((project / "runs" / worse_id / "metrics/comparison.json").read_text())
    flips = comparison["right_to_wrong"] + comparison["wrong_to_right"]
    print("EMBEDDED FLIPS", json.dumps(flips, ensure_ascii=False)[:2000])
    assert (
        comparison["accepted_job_id"] == accepted_id
        and len(comparison["right_to_wrong"]) == regression["details"]["right_to_wrong"]
    )
    assert all(row["answer"] != row["accepted_answer"] for row in flips)
    assert comparison["right_to_wrong"], flips  # greedy on a CPU: 1 flip here (a price answer lost)
    refused = client.post(f"/api/training/jobs/{worse_id}/promote").json()
    assert refused["code"] == "gate_failed" and "no-regression" in refused["message"]

    # The accepted job's release record hashes its files; a changed byte afterwards is reported by reverify.
    run = project / "runs" / accepted_id
    record = json.loads((run / "release.json").read_text())
    for item in record["artifacts"]:
        assert hashlib.sha256((run / item["path"]).read_bytes()).hexdigest() == item["sha256"], item["path"]
    assert client.post(f"/api/training/jobs/{accepted_id}/reverify").json()["unchanged"] is True
    adapter = run / "models/checkpoints/lora/adapter_config.json"
    adapter.write_text(adapter.read_text() + " ")
    changed = client.post(f"/api/training/jobs/{accepted_id}/reverify").json()
    assert [(d["path"], d["change"]) for d in changed["differences"]] == [
        ("models/checkpoints/lora/adapter_config.json", "changed")
    ], changed


def finished(client: httpx.Client, config: dict, what: str) -> dict:
    """Submit a job and wait for it to end; the job as the API then shows it."""
    job_id = client.post("/api/training", json=config).json()["id"]
    wait_for(
        lambda: client.get(f"/api/training/jobs/{job_id}").json()["status"] not in ("queued", "running"),
        900,
        what,
        interval=1.0,
    )
    return dict(client.get(f"/api/training/jobs/{job_id}").json())
