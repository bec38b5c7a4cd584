"""The progress callback: what it reports, when it stops training, and how it spots divergence."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from worker.progress import ProgressCallback
from worker.protocol import Message, Metrics, Progress, StopMode

LOGGED: list[Metrics] = []


def _collect(reports: list[Progress]) -> Any:
    """The callback sends progress, and the metrics of each logged step (for the job's events, before the progress
    line); progress is collected for the assertions, the metrics in LOGGED."""
    LOGGED.clear()

    def send(message: Message) -> None:
        if isinstance(message, Metrics):
            LOGGED.append(message)
            return
        assert isinstance(message, Progress)
        reports.append(message)

    return send


def _run(losses: list[float], stop_mode: int = 0) -> tuple[ProgressCallback, TrainerControl, list[Progress]]:
    reports: list[Progress] = []
    callback = ProgressCallback(_collect(reports), lambda: StopMode(stop_mode))
    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    state, control = TrainerState(max_steps=100, num_train_epochs=1), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step, loss in enumerate(losses, start=1):
        state.global_step, state.epoch = step, step / 100
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": loss, "learning_rate": 1e-4})
        if control.should_training_stop:
            break
    return callback, control, reports


def test_reports_steps_and_losses() -> None:
    callback, control, reports = _run([3.0, 2.5, 2.0])
    assert not control.should_training_stop and callback.diverged is None
    assert [r.loss for r in reports if r.loss is not None] == [3.0, 2.5, 2.0]
    assert reports[0].total_steps == 100
    assert [m.logs["loss"] for m in LOGGED] == [r.loss for r in reports if r.loss is not None]


def test_exploding_loss_is_divergence() -> None:
    callback, control, _ = _run([2.0, 2.2, 19.0, 25.0, 1.0])
    assert control.should_training_stop
    assert callback.diverged is not None and "rose to 25 at step 4, from 2 at the start" in callback.diverged


def test_nan_loss_is_divergence_and_is_not_reported_as_a_number() -> None:
    callback, control, reports = _run([2.0, float("nan")])
    assert control.should_training_stop and "the loss became nan at step 2" in (callback.diverged or "")
    assert reports[-1].loss is None


def test_nan_gradient_is_divergence() -> None:
    reports: list[Progress] = []
    callback = ProgressCallback(_collect(reports), lambda: StopMode.RUN)
    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    state, control = TrainerState(max_steps=10, num_train_epochs=1, global_step=1), TrainerControl()
    callback.on_log(args, state, control, logs={"loss": 12.0, "grad_norm": float("nan")})
    assert control.should_training_stop and "gradient norm became nan at step 1" in (callback.diverged or "")


def test_shutdown_saves_a_checkpoint_and_cancel_does_not() -> None:
    callback, control, _ = _run([2.0], stop_mode=2)
    assert control.should_training_stop and control.should_save and callback.stopped_by == 2
    callback, control, _ = _run([2.0], stop_mode=1)
    assert control.should_training_stop and not control.should_save and callback.stopped_by == 1


def test_failures_are_classified_with_advice() -> None:
    from worker.child import classify as _classify
    from worker.data import DataError

    assert _classify(DataError("train.jsonl:3: not JSON")) == ("dataset_invalid", "train.jsonl:3: not JSON")

    class OutOfMemoryError(RuntimeError):  # the name torch.OutOfMemoryError has
        pass

    code, message = _classify(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert code == "out_of_memory" and "per_device_train_batch_size" in message and "max_seq_length" in message
    assert _classify(ValueError("boom")) == ("training_failed", "ValueError: boom")


def test_no_evaluation_pass_when_training_is_stopped() -> None:
    """HF evaluates at an epoch's end even when training was cut short; a cancel or divergence skips it."""
    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none", eval_strategy="epoch")
    for losses, stop_mode in (([3.0, 2.0], 1), ([3.0, float("nan")], 0)):
        callback, control, _ = _run(losses, stop_mode)
        control.should_evaluate = True  # what transformers' flow callback sets at the epoch's end
        callback.on_epoch_end(args, TrainerState(), control)
        assert control.should_evaluate is False
    callback, control, _ = _run([3.0, 2.0])
    control.should_evaluate = True
    callback.on_epoch_end(args, TrainerState(), control)
    assert control.should_evaluate is True  # a normal end keeps its evaluation


@pytest.mark.serial  # step times
def test_tokens_per_second_leaves_the_first_step_out() -> None:
    """A first step that compiles (slow) does not drag the throughput figure down: it counts from its end."""
    import time

    reports: list[Progress] = []
    callback = ProgressCallback(_collect(reports), lambda: StopMode.RUN)
    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    state, control = TrainerState(max_steps=10, num_train_epochs=1), TrainerControl()
    callback.on_train_begin(args, state, control)
    pauses = [1.0, 0.05, 0.05]  # the first step "compiles"
    for step, pause in enumerate(pauses, start=1):
        time.sleep(pause)
        state.global_step, state.num_input_tokens_seen = step, 1000 * step
        callback.on_step_end(args, state, control)
    first, last = reports[1].tokens_per_second, reports[-1].tokens_per_second
    assert first is not None and first < 1000 / 1.0 * 1.01  # one step: the whole attempt's figure
    assert last is not None and last > 6000  # 2000 tokens in ~0.1 s, not 3000 in ~1.1 s (2700/s)
    assert callback.last_tokens_per_second == last
