"""The events a running job's messages stand for, buffered until the worker's next progress write.

The worker writes progress at most twice a second (worker/loop.py); the events since the last write go in
the same transaction, so a job logging every step costs no extra database writes.
"""

from __future__ import annotations

import math
from typing import Any

from app import events
from app.events import Event, EventLevel, EventType
from worker.protocol import CheckpointSaved, Message, Metrics, PartialResult, PhaseStarted


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None  # JSON has no NaN; a diverged loss shows as null


def _metric_text(name: str, value: float | None) -> str:
    return f"{name} {value:.4g}" if value is not None else f"{name} n/a"


# The metrics a message names first (the rest are in `data`).
LEADING = ("loss", "eval_loss", "learning_rate", "grad_norm", "train_loss", "train_runtime")


class JobEvents:
    """Turns the training process's messages into events for one job attempt."""

    def __init__(self, job_id: str, output_dir: str) -> None:
        self.job_id = job_id
        self.output_dir = output_dir.strip("/")
        self.buffer: list[Event] = []
        self._progress: tuple[str, int, int] | None = None
        self._scored: set[str] = set()
        self._gates_seen = False

    def _add(self, kind: EventType, message: str, data: events._Payload, level: EventLevel = EventLevel.info) -> None:
        self.buffer.append(events.new(self.job_id, kind, message, data, level))

    def observe(self, message: Message) -> list[Event]:
        """The events one message from the training process stands for (often none)."""
        match message:
            case PhaseStarted(phase=phase):
                self._add(EventType.phase, f"phase: {phase}", events.PhaseData(phase=phase))  # type: ignore[arg-type]
            case Metrics():
                self._metrics(message)
            case CheckpointSaved():
                self._checkpoint(message)
            case PartialResult(result=result):
                self._result(result)
        taken, self.buffer = self.buffer, []
        return taken

    def _metrics(self, message: Metrics) -> None:
        logged = {
            name: _number(value)
            for name, value in message.logs.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        shown = [_metric_text(n, logged[n]) for n in LEADING if n in logged]
        text = f"step {message.step}: " + (", ".join(shown) if shown else ", ".join(sorted(logged)))
        data = events.MetricsData(step=message.step, epoch=message.epoch, metrics=logged)
        self._add(EventType.metrics, text, data)

    def _checkpoint(self, message: CheckpointSaved) -> None:
        if message.score is not None:  # training.select_checkpoint best: a candidate scored on the validation split
            text = (
                f"checkpoint at step {message.step} scored {message.metric} {message.score:.4g} on the validation split"
            )
            data = events.CheckpointData(path=None, step=message.step, metric=message.metric, score=message.score)
            self._add(EventType.checkpoint, text, data)
        elif message.step is not None and message.name:  # a trainer checkpoint (training.save_steps, or a shutdown)
            path = f"{self.output_dir}/{message.name}"
            text = f"checkpoint saved at step {message.step}: {path}"
            self._add(EventType.checkpoint, text, events.CheckpointData(path=path, step=message.step))
        elif message.path:
            text = f"LoRA adapters saved: {message.path}"
            self._add(EventType.checkpoint, text, events.CheckpointData(path=message.path))

    def _result(self, result: dict[str, Any]) -> None:
        progress = result.get("evaluation_progress")
        if isinstance(progress, dict):
            key = (progress["stage"], int(progress["done"]), int(progress["total"]))
            if key != self._progress:
                self._progress = key
                stage, done, total = key
                text = f"{stage}: {done}/{total} test examples answered"
                self._add(EventType.evaluation, text, events.EvaluationData(stage=stage, done=done, total=total))  # type: ignore[arg-type]
        for stage, name in (("baseline", "baseline"), ("evaluate", "evaluation")):
            scored = result.get(name)
            if isinstance(scored, dict) and stage not in self._scored:
                self._scored.add(stage)
                metrics = scored.get("metrics") or {}
                examples = int(scored.get("examples") or 0)
                shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
                data = events.EvaluationData(stage=stage, done=examples, total=examples, metrics=metrics)  # type: ignore[arg-type]
                self._add(EventType.evaluation, f"{stage} scored on {examples} examples: {shown}", data)
        gates = result.get("gates")
        if isinstance(gates, dict) and not self._gates_seen:
            self._gates_seen = True
            for gate in gates.get("gates", []):
                level = EventLevel.warning if gate["status"] == "failed" else EventLevel.info
                verdict = events.GateData(name=gate["name"], status=gate["status"], details=gate.get("details") or {})
                self._add(EventType.gate, f"gate {gate['name']}: {gate['status']} ({gate['message']})", verdict, level)
