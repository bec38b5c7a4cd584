"""What a job in the training process tells the worker (worker.protocol messages), and when it must stop."""

from __future__ import annotations

import logging
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
        self.send(PhaseStarted(phase.value))

    def publish(self, **fields: Any) -> None:
        self.partial.update(fields)
        self.send(PartialResult(dict(self.partial)))

    def phase_progress(self, fraction: float, detail: str) -> None:
        self.send(Progress(phase_progress=fraction, phase_detail=detail))
