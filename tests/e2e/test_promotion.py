"""Promote a job, train again on worse data: no-regression fails and lists the flipped examples; slices are reported.

Through the real service (uvicorn, a worker process) with the tiny Gemma 3. "Worse" is arranged, not hoped for:
the first job learns to answer every question "Yes." (what the test split expects), the second one is trained on
the same questions answered "No.".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for

QUESTIONS = [f"Is {n} a number Kofi can count to?" for n in range(24)]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def conversation(question: str, answer: str, **tags: str) -> dict[str, Any]:
    return {"conversations": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **tags}


def config(model: Path, answer: str, steps: int) -> dict[str, Any]:
    base = tiny_config(model, max_steps=steps, learning_rate=2e-2, logging_steps=2)
    return base | {
        "dataset": {"path": f"data/{answer}/train.jsonl", "val_path": None},
        "evaluation": {
            "test_path": "data/promote/test.jsonl",
            "max_new_tokens": 4,
            "batch_size": 4,
            "inference_prompts": [],
        },
        # A constant answer is learnt in a few steps while the loss over the whole vocabulary is still high: the
        # loss gate is left out of the way, the test is about no-regression.
        "gates": {"metric": "exact_match", "max_regression": 0.1, "slice_field": "category", "loss_min_decrease": 0},
    }


def run(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    job_id = client.post("/api/training", json=body).json()["id"]
    url = f"/api/training/jobs/{job_id}"
    wait_for(lambda: client.get(url).json()["status"] in ("succeeded", "failed"), 300, f"job {job_id} to finish")
    job = dict(client.get(url).json())
    return job


def test_a_job_worse_than_the_accepted_one_fails_no_regression_and_lists_the_flips(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    for answer in ("Yes.", "No."):
        write_rows(project / f"data/{answer}/train.jsonl", [conversation(q, answer) for q in QUESTIONS[:16]])
    tests = [conversation(q, "Yes.", category="ab"[i % 2]) for i, q in enumerate(QUESTIONS[16:20])]
    write_rows(project / "data/promote/test.jsonl", tests)
    client = httpx.Client(base_url=processes.api(), timeout=60)
    processes.worker()

    first = run(client, config(tiny_model_dir, "Yes.", steps=24))
    gates = {gate["name"]: gate for gate in first["gates"]["gates"]}
    assert first["status"] == "succeeded", (first["error"], gates, processes.log_text())
    assert first["result"]["evaluation"]["metrics"]["exact_match"] == 1.0, gates
    assert gates["no-regression"]["status"] == "not_run" and "no accepted model" in gates["no-regression"]["message"]
    promoted = client.post(f"/api/training/jobs/{first['id']}/promote", json={"note": "says yes", "by": "e2e"})
    assert promoted.status_code == 200, promoted.text

    second = run(client, config(tiny_model_dir, "No.", steps=4))
    assert second["status"] == "succeeded" and second["accepted_job_id"] == first["id"]
    gates = {gate["name"]: gate for gate in second["gates"]["gates"]}
    regression = gates["no-regression"]
    assert regression["status"] == "failed", regression
    assert regression["details"]["accepted"] == 1.0 and regression["details"]["right_to_wrong"] == 4
    refused = client.post(f"/api/training/jobs/{second['id']}/promote").json()
    assert refused["code"] == "gate_failed" and "no-regression" in refused["message"]
    assert client.get("/api/training/accepted").json()["job_id"] == first["id"]

    metrics = project / "runs" / second["id"] / "metrics"
    comparison = json.loads((metrics / "comparison.json").read_text())
    assert comparison["accepted_job_id"] == first["id"] and comparison["wrong_to_right"] == []
    flipped = comparison["right_to_wrong"]
    assert [row["index"] for row in flipped] == [0, 1, 2, 3]
    assert {row["accepted_answer"] for row in flipped} == {"Yes."} and "Yes." not in {row["answer"] for row in flipped}
    assert [row["slice"] for row in flipped] == ["a", "b", "a", "b"]

    slices = json.loads((metrics / "slices.json").read_text())
    assert slices["models"] == ["baseline", "fine_tuned", "accepted"] and list(slices["slices"]) == ["a", "b"]
    for tag in ("a", "b"):
        scores = {model: slices["slices"][tag][model]["exact_match"] for model in slices["models"]}
        assert scores == {"baseline": 0.0, "fine_tuned": 0.0, "accepted": 1.0}, (tag, scores)
