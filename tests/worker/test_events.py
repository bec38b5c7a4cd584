"""The training process's messages as job events (worker/events.py)."""

from __future__ import annotations

from app.events import EventLevel, EventType
from worker.events import JobEvents
from worker.protocol import CheckpointSaved, Metrics, PartialResult, PhaseStarted, Progress


def test_messages_become_typed_events() -> None:
    recorder = JobEvents("job1", "outputs/")
    events = recorder.observe(PhaseStarted(phase="training"))
    assert recorder.observe(Progress(step=1)) == []  # progress alone is no event
    events += recorder.observe(Metrics(step=1, epoch=0.5, logs={"loss": 2.5, "grad_norm": float("nan"), "x": "s"}))
    events += recorder.observe(CheckpointSaved(step=4, name="checkpoint-4"))
    events += recorder.observe(CheckpointSaved(path="models/checkpoints/lora"))
    scored_checkpoint = recorder.observe(CheckpointSaved(step=6, metric="token_f1", score=0.4375))
    for done in (0, 0, 2):  # the same progress twice is one event
        events += recorder.observe(
            PartialResult({"evaluation_progress": {"stage": "evaluate", "done": done, "total": 2}})
        )
    gates = {"gates": [{"name": "model-performance", "status": "failed", "message": "no gain", "details": {}}]}
    scored = {"evaluation": {"examples": 2, "metrics": {"chrf": 1.5}}, "gates": gates}
    events += recorder.observe(PartialResult(scored))
    assert recorder.observe(PartialResult(scored)) == []  # scores and gates are told once

    assert [e.type for e in events] == [
        EventType.phase,
        EventType.metrics,
        EventType.checkpoint,
        EventType.checkpoint,
        EventType.evaluation,
        EventType.evaluation,
        EventType.evaluation,
        EventType.gate,
    ]
    metrics = events[1]
    assert metrics.data == {"step": 1, "epoch": 0.5, "metrics": {"loss": 2.5, "grad_norm": None}}  # NaN is null
    assert metrics.message == "step 1: loss 2.5, grad_norm n/a"
    none = {"metric": None, "score": None}
    assert events[2].data == {"path": "outputs/checkpoint-4", "step": 4, **none}
    assert events[3].data == {"path": "models/checkpoints/lora", "step": None, **none}
    # training.select_checkpoint best: each scored checkpoint is a checkpoint event with its validation score.
    assert [e.type for e in scored_checkpoint] == [EventType.checkpoint]
    assert scored_checkpoint[0].data == {"path": None, "step": 6, "metric": "token_f1", "score": 0.4375}
    assert scored_checkpoint[0].message == "checkpoint at step 6 scored token_f1 0.4375 on the validation split"
    assert events[6].data["metrics"] == {"chrf": 1.5}
    assert events[7].level == EventLevel.warning and events[7].message.startswith("gate model-performance: failed")
