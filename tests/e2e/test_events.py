"""Job events end to end: written by the real API and worker while a tiny Gemma 3 trains, read as a list and as
a Server-Sent Events stream that a client leaves and rejoins with Last-Event-ID; checkpoints; TensorBoard."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import tiny_config
from tests.e2e.conftest import Processes, wait_for

TERMINAL = {"succeeded", "failed", "cancelled"}


def sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Frames of an event stream: {"id", "event", "data"} for events, {"comment"} for comments."""
    frame: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            frame[name] = value.removeprefix(" ")


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every event through the paginated list, 5 at a time (so the cursor is exercised)."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(f"/api/training/jobs/{job_id}/events", params={"after": after, "limit": 5}).json()
        found += page["items"]
        if not page["has_more"]:
            return found
        after = page["last_id"]


def test_stream_replays_what_a_reconnecting_client_missed(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    config = tiny_config(tiny_model_dir, max_steps=12, logging_steps=1, save_steps=4, eval_steps=4)
    job_id = client.post("/api/training", json=config).json()["id"]
    url = f"/api/training/jobs/{job_id}/events/stream"

    # First connection: read until training has logged a few steps, then hang up mid-job.
    first: list[dict[str, Any]] = []
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for frame in sse(response.iter_lines()):
            if "id" in frame:
                first.append(frame)
                if sum(f["event"] == "metrics" for f in first) >= 3:
                    break
    last_seen = first[-1]["id"]
    assert first[-1]["event"] not in TERMINAL
    # Let the job move on while no one listens, so that there is something to miss.
    wait_for(
        lambda: (
            len(client.get(f"/api/training/jobs/{job_id}/events", params={"after": last_seen}).json()["items"]) >= 3
        ),
        120,
        "events written while disconnected",
    )

    # Second connection: from where the first left off, through to the end; the server closes the stream.
    second: list[dict[str, Any]] = []
    with client.stream("GET", url, headers={"Last-Event-ID": last_seen}) as response:
        for frame in sse(response.iter_lines()):
            if "id" in frame:
                second.append(frame)
    assert second[-1]["event"] == "succeeded", processes.log_text()

    stored = all_events(client, job_id)
    streamed = first + second
    ids = [int(f["id"]) for f in streamed]
    assert ids == sorted(set(ids)), "duplicates or out of order"
    assert int(second[0]["id"]) > int(last_seen)
    assert ids == [e["id"] for e in stored], "the two connections together are exactly the stored events"
    for frame, event in zip(streamed, stored, strict=True):
        assert json.loads(frame["data"]) == event and frame["event"] == event["type"]

    # What happened, in order, with typed payloads.
    kinds = [e["type"] for e in stored]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "succeeded"
    phases = [e["data"]["phase"] for e in stored if e["type"] == "phase"]
    assert phases == ["loading_model", "attaching_lora", "preparing_data", "baseline", "training", "saving", "evaluate"]
    train_metrics = [e for e in stored if e["type"] == "metrics" and "loss" in e["data"]["metrics"]]
    assert [e["data"]["step"] for e in train_metrics] == list(range(1, 13))  # every logging_steps
    assert all(e["data"]["metrics"]["loss"] > 0 for e in train_metrics)
    evals = [e for e in stored if e["type"] == "metrics" and "eval_loss" in e["data"]["metrics"]]
    assert [e["data"]["step"] for e in evals] == [4, 8, 12]
    saved = [e["data"] for e in stored if e["type"] == "checkpoint" and e["data"]["path"]]
    none = {"metric": None, "score": None}
    assert saved[:3] == [{"path": f"outputs/checkpoint-{n}", "step": n, **none} for n in (4, 8, 12)]
    assert saved[3] == {"path": "models/checkpoints/lora", "step": None, **none}
    # select_checkpoint best (the default with a validation split): every evaluation point is scored.
    scored = [e["data"] for e in stored if e["type"] == "checkpoint" and not e["data"]["path"]]
    assert [(c["step"], c["metric"]) for c in scored] == [(n, "token_f1") for n in (4, 8, 12)]
    progress = [e["data"] for e in stored if e["type"] == "evaluation"]
    assert {p["stage"] for p in progress} == {"baseline", "evaluate"}
    assert any(p["metrics"] for p in progress if p["stage"] == "evaluate")
    gates = {e["data"]["name"]: e["data"]["status"] for e in stored if e["type"] == "gate"}
    assert set(gates) >= {"baseline-established", "model-performance", "loss-converged"}
    assert all(e["created_at"] for e in stored) and {e["level"] for e in stored} <= {"info", "warning", "error"}

    # Replaying a finished job's stream from any id gives the rest and closes.
    middle = stored[len(stored) // 2]["id"]
    with client.stream("GET", url, params={"after": middle}) as response:
        replay = [int(f["id"]) for f in sse(response.iter_lines()) if "id" in f]
    assert replay == [e["id"] for e in stored if e["id"] > middle]

    # Checkpoints: the two kept (save_total_limit 2), with the metrics their trainer state recorded.
    listed = client.get(f"/api/training/jobs/{job_id}/checkpoints").json()["items"]
    assert [c["name"] for c in listed] == ["checkpoint-8", "checkpoint-12"]
    losses = {e["data"]["step"]: e["data"]["metrics"]["loss"] for e in train_metrics}
    eval_losses = {e["data"]["step"]: e["data"]["metrics"]["eval_loss"] for e in evals}
    for item in listed:
        assert item["complete"] is True and item["bytes"] > 0 and item["epoch"] > 0
        assert item["train_loss"] == losses[item["step"]]
        assert item["eval_loss"] == eval_losses[item["step"]]
        assert item["path"] == f"outputs/{item['name']}"
        assert item["score"] == next(c["score"] for c in scored if c["step"] == item["step"])
    picked = json.loads((project / "runs" / job_id / "metrics/checkpoints.json").read_text())["picked_step"]
    assert [c["picked"] for c in listed] == [c["step"] == picked for c in listed]

    # Export can name a checkpoint: its adapters are merged, not the final ones.
    exports = f"/api/training/jobs/{job_id}/exports"
    merged_only = {"gguf_path": None, "merged_path": "models/merged"}
    gone = client.post(exports, json={"checkpoint": "checkpoint-4", **merged_only})  # not kept: save_total_limit 2
    assert gone.status_code == 422 and gone.json()["param"] == "checkpoint", gone.text
    weights = {}
    for name in ("checkpoint-8", "checkpoint-12"):
        created = client.post(exports, json={"checkpoint": name, **merged_only})
        assert created.status_code == 201, created.text
        export_id = created.json()["id"]
        url = f"/api/training/jobs/{export_id}"
        done = wait_for(lambda u=url: (j := client.get(u).json())["status"] in TERMINAL and j, 240, name)
        assert done["status"] == "succeeded", (done["error"], processes.log_text())
        weights[name] = (project / "runs" / export_id / "models/merged/model.safetensors").read_bytes()
    assert weights["checkpoint-8"] != weights["checkpoint-12"]


def test_stream_keeps_alive_and_ends_with_a_cancel(processes: Processes, tiny_model_dir: Path) -> None:
    """No worker: the job waits queued; the stream sends keep-alive comments until the cancel ends it."""
    base = processes.api(FORGE_EVENTS_KEEPALIVE_SECONDS="0.3")
    client = httpx.Client(base_url=base, timeout=120)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir)).json()["id"]
    frames: list[dict[str, Any]] = []
    started = time.monotonic()
    with client.stream("GET", f"/api/training/jobs/{job_id}/events/stream") as response:
        for frame in sse(response.iter_lines()):
            frames.append(frame)
            comments = sum("comment" in f for f in frames)
            if comments == 2:
                assert client.post(f"/api/training/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert time.monotonic() - started < 20
    kinds = [f["event"] for f in frames if "id" in f]
    assert kinds == ["queued", "cancel_requested", "cancelled"]
    assert frames[0] == {"retry": "1000"}
    assert {"comment": "keep-alive"} in frames

    missing = client.get("/api/training/jobs/nope/events/stream")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    bad = client.get(f"/api/training/jobs/{job_id}/events/stream", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 422 and bad.json()["param"] == "Last-Event-ID"


def test_report_to_tensorboard_and_mlflow_log_every_step(
    processes: Processes, project: Path, tiny_model_dir: Path
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = processes.api()
    processes.worker()
    client = httpx.Client(base_url=base, timeout=60)
    config = tiny_config(tiny_model_dir, max_steps=6, logging_steps=1, report_to=["tensorboard", "mlflow"])
    config["evaluation"] = {"baseline": False, "evaluate": False}
    created = client.post("/api/training", json=config)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    job = wait_for(
        lambda: (j := client.get(f"/api/training/jobs/{job_id}").json())["status"] in TERMINAL and j, 240, "the job"
    )
    assert job["status"] == "succeeded", (job["error"], processes.log_text())
    logged = [e["data"] for e in all_events(client, job_id) if e["type"] == "metrics"]
    expected = {m["step"]: m["metrics"]["loss"] for m in logged if "loss" in m["metrics"]}
    assert sorted(expected) == list(range(1, 7))

    listing = client.get(f"/api/training/jobs/{job_id}/artifacts").json()["items"]
    event_files = [a for a in listing if a["name"].startswith("logs/tensorboard/events.out.tfevents")]
    assert event_files and all(a["kind"] == "log" for a in event_files)
    accumulator = EventAccumulator(str(project / "runs" / job_id / "logs" / "tensorboard"))
    accumulator.Reload()
    scalars = {s.step: s.value for s in accumulator.Scalars("train/loss")}
    assert sorted(scalars) == sorted(expected)
    for step, loss in expected.items():
        assert abs(scalars[step] - loss) < 1e-4 * max(1.0, abs(loss))

    # MLflow: one run named by the job id, in the project's default store, with the loss of every step.
    tracking = MlflowClient(f"sqlite:///{project / '.factory' / 'mlflow.db'}")
    experiment = tracking.get_experiment_by_name("forge-trainer")
    assert experiment is not None
    runs = tracking.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{job_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = {m.step: m.value for m in tracking.get_metric_history(runs[0].info.run_id, "loss")}
    assert sorted(history) == sorted(expected)
    for step, loss in expected.items():
        assert abs(history[step] - loss) < 1e-6 * max(1.0, abs(loss))

    refused = client.post("/api/training", json={**config, "training": {**config["training"], "report_to": ["wandb"]}})
    assert refused.status_code == 422 and refused.json()["details"][0]["param"].startswith("training.report_to")
