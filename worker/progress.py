"""A TrainerCallback that reports progress to the worker and stops training when asked."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("forge.worker.job")


class ProgressCallback(TrainerCallback):
    def __init__(self, report: Callable[[dict[str, Any]], None], should_stop: Callable[[], bool]) -> None:
        self.report = report
        self.should_stop = should_stop
        self.started = 0.0
        self.first_step_at = 0.0
        self.last: dict[str, Any] = {}
        self.log_history: list[dict[str, Any]] = []
        self.stopped = False

    def _eta(self, state: Any) -> float | None:
        if state.global_step < 1 or not state.max_steps:
            return None
        elapsed = time.monotonic() - self.started
        return max(0.0, elapsed / state.global_step * (state.max_steps - state.global_step))

    def _tokens_per_second(self, state: Any) -> float | None:
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        elapsed = time.monotonic() - self.started
        return round(seen / elapsed, 1) if seen and elapsed > 0 else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()
        self.report(
            {
                "type": "progress",
                "step": 0,
                "total_steps": state.max_steps,
                "epoch": 0.0,
                "total_epochs": float(state.num_train_epochs or args.num_train_epochs),
            }
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.report(
            {
                "type": "progress",
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": float(state.epoch or 0.0),
                "eta_seconds": self._eta(state),
                "tokens_per_second": self._tokens_per_second(state),
            }
        )
        if self.should_stop():
            self.stopped = True
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        entry = {"step": state.global_step, "epoch": float(state.epoch or 0.0), **logs}
        self.log_history.append(entry)
        log.info("metrics %s", json.dumps(entry, default=float))
        update: dict[str, Any] = {"type": "progress", "step": state.global_step}
        if "loss" in logs:
            update["loss"] = float(logs["loss"])
        if "learning_rate" in logs:
            update["learning_rate"] = float(logs["learning_rate"])
        self.report(update)
        self.report({"type": "log", "entry": entry})
