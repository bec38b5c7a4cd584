"""baseline -> finetune -> evaluate -> gates through the real service, on the tiny Gemma 3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for


def evaluated_config(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    config = tiny_config(model_dir, max_steps=12)
    config["evaluation"] = {"max_new_tokens": 6, "batch_size": 2, "glossary_path": "data/glossary.json"}
    config["gates"] = {"metric": "token_f1"}
    for section, values in overrides.items():
        config[section] = config.get(section, {}) | values
    return config


def run_job(client: httpx.Client, config: dict[str, Any], polls: list[dict[str, Any]]) -> dict[str, Any]:
    job_id = client.post("/api/training", json=config).json()["id"]

    def finished() -> bool:
        polls.append(client.get("/api/training").json())
        return polls[-1]["status"] in ("succeeded", "failed", "cancelled")

    wait_for(finished, 300, "the job to finish", interval=0.1)
    return dict(client.get(f"/api/training/jobs/{job_id}").json())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_files_agree(run: Path, job: dict[str, Any], status: dict[str, Any], examples: int) -> None:
    """metrics/*.json, samples.jsonl, gates.json, the job and the status object tell one story."""
    baseline = json.loads((run / "metrics/baseline.json").read_text())
    evaluation = json.loads((run / "metrics/evaluation.json").read_text())
    gates = json.loads((run / "metrics/gates.json").read_text())
    stats = json.loads((run / "metrics/training-stats.json").read_text())
    samples = read_jsonl(run / "metrics/samples.jsonl")
    assert (run / "metrics/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert baseline["examples"] == evaluation["examples"] == examples
    assert job["result"]["baseline"]["metrics"] == baseline["metrics"] == stats["baseline"]["metrics"]
    assert job["result"]["evaluation"]["metrics"] == evaluation["metrics"] == stats["evaluation"]["metrics"]
    assert job["gates"] == gates == job["result"]["gates"] == status["gates"]
    assert job["evaluation"] == status["evaluation"] == {"stage": "evaluate", "done": examples, "total": examples}

    # Each stage's rows in samples.jsonl average to its metrics.
    for stage, report in (("baseline", baseline), ("evaluate", evaluation)):
        rows = [row for row in samples if row["stage"] == stage]
        assert [row["index"] for row in rows] == list(range(examples))
        for metric in ("exact_match", "token_f1", "rouge_l"):
            mean = sum(row[metric] for row in rows) / examples
            assert abs(mean - report["metrics"][metric]) < 1e-5, (stage, metric)
    inference = [row for row in samples if row["stage"] == "inference"]
    assert [row["prompt"] for row in inference] == [[{"role": "user", "content": "What is 5 + 3?"}]]
    assert isinstance(inference[0]["answer"], str)

    by_name = {gate["name"]: gate for gate in gates["gates"]}
    assert list(by_name) == [
        "baseline-established",
        "model-performance",
        "loss-converged",
        "quantization-verified",
        "no-regression",
    ]
    performance, metric = by_name["model-performance"]["details"], job["config"]["gates"]["metric"]
    assert performance["baseline"] == baseline["metrics"][metric]
    assert performance["fine_tuned"] == evaluation["metrics"][metric]
    assert by_name["quantization-verified"]["status"] == "not_run"
    losses = [entry["loss"] for entry in stats["log_history"] if "loss" in entry]
    assert by_name["loss-converged"]["details"]["logged"] == len(losses)
    assert gates["passed"] == all(gate["status"] != "failed" for gate in gates["gates"])


def test_job_scores_the_base_and_the_fine_tuned_model(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    client = httpx.Client(base_url=processes.api(), timeout=60)
    processes.worker()
    polls: list[dict[str, Any]] = []
    job = run_job(client, evaluated_config(tiny_model_dir), polls)
    assert job["status"] == "succeeded", (job["error"], processes.log_text())

    # The UI saw each step: progress through the test split in both scoring phases, then training.
    phases = [p["phase"] for p in polls]
    assert phases.index("baseline") < phases.index("training") < phases.index("evaluate")
    seen = {(p["evaluation"]["stage"], p["evaluation"]["done"]) for p in polls if p["running"] and p["evaluation"]}
    assert any(stage == "baseline" for stage, _ in seen) and any(stage == "evaluate" for stage, _ in seen)
    baseline_done = [p["evaluation"]["done"] for p in polls if p["phase"] == "training" and p["evaluation"]]
    assert baseline_done and set(baseline_done) == {8}  # while training, the finished baseline is shown

    run = project / "runs" / job["id"]
    status = client.get("/api/training").json()
    check_files_agree(run, job, status, examples=8)
    assert json.loads((project / ".factory/training-status.json").read_text())["gates"] == job["gates"]
    kinds = {a["name"]: a["kind"] for a in client.get(f"/api/training/jobs/{job['id']}/artifacts").json()["items"]}
    for name in ("baseline.json", "evaluation.json", "samples.jsonl", "gates.json", "loss.png"):
        assert kinds[f"metrics/{name}"] == "metrics"
    log = (run / "logs/training.log").read_text()
    assert log.index("phase: baseline") < log.index("phase: training") < log.index("phase: evaluate")

    # Where the time went, from the job's own phase timestamps: every phase it went through, in order.
    seconds = job["result"]["phase_seconds"]
    order = ["starting", "loading_model", "attaching_lora", "preparing_data", "baseline", "training", "saving"]
    assert list(seconds) == [*order, "evaluate"] and all(value >= 0 for value in seconds.values())
    assert seconds["training"] >= job["result"]["train_runtime_seconds"] * 0.9
    assert sum(seconds.values()) >= job["result"]["wall_seconds"]  # the claim came before the recipe's clock


def test_baseline_is_the_untrained_model(processes: Processes, project: Path, tiny_model_dir: Path) -> None:
    """With no training the fine-tuned model is the base model: both steps must score it the same."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.datasets.templates import TEMPLATES
    from app.training_config import EvaluationSection
    from worker import evaluation as ev

    client = httpx.Client(base_url=processes.api(), timeout=60)
    processes.worker()
    # A learning rate of ~0 leaves the LoRA's B matrices at zero: training changes nothing.
    config = evaluated_config(tiny_model_dir, training={"max_steps": 2, "learning_rate": 1e-12, "warmup_steps": 0})
    job = run_job(client, config, [])
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    before, after = job["result"]["baseline"]["metrics"], job["result"]["evaluation"]["metrics"]
    assert before == pytest.approx(after, rel=1e-4)

    # And the baseline's test loss is the plain base model's, computed here without any adapter.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = TEMPLATES["gemma-3"].jinja
    examples = ev.load_test_set(project / "data/splits/test.jsonl", EvaluationSection())
    plain = ev.answer_loss(model, tokenizer, examples, template=TEMPLATES["gemma-3"], max_length=256, batch_size=4)
    assert before["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-4)
    gates = {gate["name"]: gate["status"] for gate in job["gates"]["gates"]}
    assert gates["model-performance"] == "failed" and job["gates"]["passed"] is False


def test_required_gate_fails_the_job_and_keeps_the_results(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    client = httpx.Client(base_url=processes.api(), timeout=60)
    processes.worker()
    # No model gains 10000% token F1 in 2 steps.
    config = evaluated_config(
        tiny_model_dir,
        training={"max_steps": 2},
        evaluation={"max_examples": 2},
        gates={"required": True, "min_improvement": 100.0},
    )
    job = run_job(client, config, [])
    assert job["status"] == "failed" and job["error"]["code"] == "gate_failed"
    assert "model-performance failed" in job["error"]["message"]
    gates = {gate["name"]: gate["status"] for gate in job["gates"]["gates"]}
    assert gates["model-performance"] == "failed" and job["gates"]["required"] is True
    run = project / "runs" / job["id"]
    assert json.loads((run / "metrics/gates.json").read_text()) == job["gates"]
    assert (run / "models/checkpoints/lora/adapter_model.safetensors").is_file()  # the work is kept
    assert job["result"]["steps"] == 2 and job["result"]["evaluation"]["examples"] == 2


def test_a_baseline_is_scored_once_and_reused_by_later_jobs(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    """Same base model, test split and generation settings: the second job copies the first one's baseline, even
    on other training data; a change to the generation settings, the split or the model scores it again.

    The same worker also keeps the loaded model between jobs on the same base model: a later job trains on it
    from fresh adapters and a new optimizer, so its losses equal those of the first job (loaded cold) on the
    same data and seed."""
    import shutil

    client = httpx.Client(base_url=processes.api(), timeout=60)
    processes.worker()
    config = evaluated_config(tiny_model_dir, training={"max_steps": 3})
    first = run_job(client, config, [])
    assert first["status"] == "succeeded", (first["error"], processes.log_text())

    def baseline(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        run = project / "runs" / job["id"]
        rows = [row for row in read_jsonl(run / "metrics/samples.jsonl") if row["stage"] == "baseline"]
        return json.loads((run / "metrics/baseline.json").read_text()), rows

    scored, scored_rows = baseline(first)
    assert "reused_from" not in scored and len(scored_rows) == 8

    other_data = project / "data/other-train.jsonl"
    rows = (project / "data/splits/train.jsonl").read_text().splitlines()
    other_data.write_text("\n".join(reversed(rows[: len(rows) // 2])) + "\n")
    second = run_job(client, config | {"dataset": {"path": "data/other-train.jsonl"}}, [])
    assert second["status"] == "succeeded", (second["error"], processes.log_text())
    reused, reused_rows = baseline(second)
    assert reused["reused_from"]["job_id"] == first["id"]
    assert reused["metrics"] == scored["metrics"] == second["result"]["baseline"]["metrics"]
    assert reused_rows == scored_rows  # the answers too: a later comparison per example reads them
    log = (project / "runs" / second["id"] / "logs/training.log").read_text()
    assert f"baseline: reused from job {first['id']}" in log

    # What the baseline depends on, changed one at a time: each job scores the base model itself.
    longer = evaluated_config(tiny_model_dir, training={"max_steps": 3}, evaluation={"max_new_tokens": 3})
    test = project / "data/splits/test.jsonl"
    other_split = project / "data/other-test.jsonl"
    other_split.write_text("\n".join(test.read_text().splitlines()[1:]) + "\n")
    copy = shutil.copytree(tiny_model_dir, project / "models" / "tiny-copy")
    changed = {
        "generation settings": longer,
        "test split": config | {"evaluation": config["evaluation"] | {"test_path": "data/other-test.jsonl"}},
        "model": config | {"model": config["model"] | {"name": str(copy)}},
        "reuse_baseline false": config | {"evaluation": config["evaluation"] | {"reuse_baseline": False}},
    }
    ran = {}
    for what, changed_config in changed.items():
        ran[what] = job = run_job(client, changed_config, [])
        assert job["status"] == "succeeded", (what, job["error"], processes.log_text())
        report, _ = baseline(job)
        assert "reused_from" not in report, what

    def losses(job: dict[str, Any]) -> list[float]:
        stats = json.loads((project / "runs" / job["id"] / "metrics/training-stats.json").read_text())
        return [entry["loss"] for entry in stats["log_history"] if "loss" in entry]

    # The loaded model: kept for every job on the same model files, loaded again for another model and after it.
    kept_from = {what: job["result"]["model_kept_from"] for what, job in ran.items()}
    assert first["result"]["model_kept_from"] is None and second["result"]["model_kept_from"] == first["id"]
    assert kept_from == {
        "generation settings": first["id"],
        "test split": first["id"],
        "model": None,
        "reuse_baseline false": None,
    }
    assert second["result"]["phase_seconds"]["loading_model"] < first["result"]["phase_seconds"]["loading_model"]
    # Trained on the kept model after two other jobs, and loaded again: the same steps as the cold first job.
    assert len(losses(first)) == 3 and losses(second) != losses(first)
    assert losses(ran["generation settings"]) == losses(first)
    assert losses(ran["reuse_baseline false"]) == losses(first)
