"""A TrainerCallback that reports progress to the worker and stops training when asked."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from worker.protocol import CheckpointSaved, Message, Metrics, Progress, StopMode

log = logging.getLogger("forge.worker.job")


# A loss this many times the first one logged, or not a number at all, means training has diverged.
DIVERGENCE_FACTOR = 10.0


class ProgressCallback(TrainerCallback):
    def __init__(self, report: Callable[[Message], None], stop_mode: Callable[[], StopMode]) -> None:
        self.report = report
        self.stop_mode = stop_mode
        self.started = 0.0
        self.first_step: tuple[float, int] | None = None  # (time, tokens seen) when this attempt's first step ended
        self.last_tokens_per_second: float | None = None
        self.log_history: list[dict[str, Any]] = []
        self.first_loss: float | None = None
        self.stopped_by: StopMode | None = None
        self.diverged: str | None = None

    def _eta(self, state: Any) -> float | None:
        if state.global_step < 1 or not state.max_steps:
            return None
        elapsed = time.monotonic() - self.started
        return max(0.0, elapsed / state.global_step * (state.max_steps - state.global_step))

    def _tokens_per_second(self, state: Any) -> float | None:
        """Training throughput after this attempt's first step: its compile and warm-up are left out (the whole
        attempt's until a second step has run)."""
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = (now, seen)
        since, seen_then = self.first_step
        if now > since and seen > seen_then:
            return round((seen - seen_then) / (now - since), 1)
        elapsed = now - self.started
        return round(seen / elapsed, 1) if seen and elapsed > 0 else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()
        self.report(
            Progress(
                step=0,
                total_steps=state.max_steps,
                epoch=0.0,
                total_epochs=float(state.num_train_epochs or args.num_train_epochs),
            )
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last_tokens_per_second = self._tokens_per_second(state)
        self.report(
            Progress(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=float(state.epoch or 0.0),
                eta_seconds=self._eta(state),
                tokens_per_second=self.last_tokens_per_second,
            )
        )
        mode = self.stop_mode()
        if mode != StopMode.RUN:
            self.stopped_by = mode
            control.should_training_stop = True
            # A shutdown saves a checkpoint of this step, so the job resumes here on another worker.
            control.should_save = mode == StopMode.SHUTDOWN

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Evaluation at an epoch's end also runs when training is cut short; a cancel, a shutdown or a
        # divergence should stop now, not after a pass over the validation set.
        if self.stopped_by is not None or self.diverged:
            control.should_evaluate = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        # Wall time and tokens seen make the history a throughput record too (bench/train_throughput.py).
        entry = {
            "step": state.global_step,
            "epoch": float(state.epoch or 0.0),
            "time": round(time.time(), 3),
            "tokens_seen": int(getattr(state, "num_input_tokens_seen", 0) or 0),
            **logs,
        }
        self.log_history.append(entry)
        log.info("metrics %s", json.dumps(entry, default=float))
        update = Progress(step=state.global_step)
        if "loss" in logs:
            loss = float(logs["loss"])
            update.loss = loss if math.isfinite(loss) else None
            self._check_divergence(loss, float(logs.get("grad_norm", 0.0)), state.global_step, control)
        if "learning_rate" in logs:
            update.learning_rate = float(logs["learning_rate"])
        # Everything logged, for the job's events (worker/events.py); before the progress line, which stays last.
        self.report(Metrics(step=state.global_step, epoch=entry["epoch"], logs=dict(logs)))
        self.report(update)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.report(CheckpointSaved(step=state.global_step, name=f"checkpoint-{state.global_step}"))

    def _check_divergence(self, loss: float, grad_norm: float, step: int, control: Any) -> None:
        if self.first_loss is None and math.isfinite(loss):
            self.first_loss = loss
        if not math.isfinite(loss):
            problem = f"the loss became {loss} at step {step}"
        elif not math.isfinite(grad_norm):  # the weights are NaN from here on, whatever the loss says
            problem = f"the gradient norm became {grad_norm} at step {step}"
        elif self.first_loss is not None and loss > DIVERGENCE_FACTOR * max(self.first_loss, 1e-3):
            problem = f"the loss rose to {loss:.4g} at step {step}, from {self.first_loss:.4g} at the start"
        else:
            return
        self.diverged = (
            f"training diverged: {problem}. Lower training.learning_rate (try 1e-4), raise warmup_steps, "
            "and check the data for broken rows"
        )
        control.should_training_stop = True
