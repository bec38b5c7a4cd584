"""What a job in the training process tells the worker (worker.protocol messages), and when it must stop."""

from __future__ import annotations

import logging
import time
from typing import Any

from app.models import JobPhase
from worker import ranks
from worker.protocol import Message, PartialResult, PhaseStarted, Progress, StopMode, StopRequested

log = logging.getLogger("forge.worker.job")


class Reporter:
    """The pipe to the worker and the stop flag, as one job's steps use them."""

    def __init__(self, conn: Any, stop_flag: Any) -> None:
        self.conn = conn
        self.stop_flag = stop_flag
        # What the job knows before it ends (baseline metrics, evaluation progress), shown in its `result`.
        self.partial: dict[str, Any] = {}
        self.phases: list[tuple[str, float]] = []  # (phase, wall time it started), in order

    def phase_seconds(self, claimed_at: float | None) -> dict[str, float]:
        """Wall seconds of each phase so far, in order; `starting` runs from the worker's claim to the first phase
        (the training process's start and imports on a cold worker)."""
        marks = [(JobPhase.starting.value, claimed_at)] if claimed_at is not None and self.phases else []
        marks += self.phases
        seconds: dict[str, float] = {}
        for (name, start), (_, end) in zip(marks, [*marks[1:], ("", time.time())], strict=True):
            seconds[name] = round(seconds.get(name, 0.0) + max(end - start, 0.0), 3)
        return seconds

    def send(self, message: Message) -> None:
        self.conn.send(message)

    def stop_mode(self) -> StopMode:
        return StopMode(self.stop_flag.value)

    def step_stop_mode(self) -> StopMode:
        """The stop mode at the end of a training step: rank 0's on every DDP rank, so that all stop together."""
        return ranks.agree(self.stop_mode())

    def check_stop(self) -> None:
        """Raises StopRequested when the worker asked the job to stop."""
        mode = self.stop_mode()
        if mode != StopMode.RUN:
            raise StopRequested(mode)

    def phase(self, phase: JobPhase) -> None:
        self.check_stop()
        log.info("phase: %s", phase.value)
        self.phases.append((phase.value, time.time()))
        self.send(PhaseStarted(phase.value))

    def publish(self, **fields: Any) -> None:
        self.partial.update(fields)
        self.send(PartialResult(dict(self.partial)))

    def phase_progress(self, fraction: float, detail: str) -> None:
        self.send(Progress(phase_progress=fraction, phase_detail=detail))
