"""The training process's messages as job events (worker/events.py)."""

from __future__ import annotations

from app.events import EventLevel, EventType
from worker.events import JobEvents


def test_messages_become_typed_events() -> None:
    recorder = JobEvents("job1", "outputs/")
    recorder.observe("phase", {"phase": "training"})
    recorder.observe("progress", {"step": 1})  # progress alone is no event
    recorder.observe("metrics", {"step": 1, "epoch": 0.5, "logs": {"loss": 2.5, "grad_norm": float("nan"), "x": "s"}})
    recorder.observe("checkpoint", {"step": 4, "name": "checkpoint-4"})
    recorder.observe("checkpoint", {"path": "models/checkpoints/lora"})
    for done in (0, 0, 2):  # the same progress twice is one event
        recorder.observe("result", {"result": {"evaluation_progress": {"stage": "evaluate", "done": done, "total": 2}}})
    gates = {"gates": [{"name": "model-performance", "status": "failed", "message": "no gain", "details": {}}]}
    recorder.observe("result", {"result": {"evaluation": {"examples": 2, "metrics": {"chrf": 1.5}}, "gates": gates}})
    recorder.observe("result", {"result": {"evaluation": {"examples": 2, "metrics": {"chrf": 1.5}}, "gates": gates}})

    events = recorder.take()
    assert recorder.take() == []
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
    assert events[2].data == {"path": "outputs/checkpoint-4", "step": 4}
    assert events[3].data == {"path": "models/checkpoints/lora", "step": None}
    assert events[6].data["metrics"] == {"chrf": 1.5}
    assert events[7].level == EventLevel.warning and events[7].message.startswith("gate model-performance: failed")
