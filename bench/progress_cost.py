"""What progress reporting costs a training step, at `logging_steps: 1`.

Two halves, each the real code:
- in the training process, per step: `ProgressCallback.on_step_end` + `on_log` (a real TrainerState, a real
  multiprocessing pipe to a reader that drains it, the log line into a real training.log);
- in the worker process, per flush (at most every 0.5 s, whatever the step rate): `Worker._flush`, i.e. the
  guarded UPDATE in SQLite, the job events since the last flush (INSERTs in the same transaction) and the
  atomic, fsynced `.factory/training-status.json`.
Only the first half is on the training step's path; the second runs in the worker, on another core.

    python bench/progress_cost.py                 # prints one JSON object
    python bench/progress_cost.py --step-ms 38    # also: overhead as a share of a step of that length
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _drain(conn: object) -> None:
    try:
        while True:
            conn.recv()  # type: ignore[attr-defined]
    except EOFError:
        pass


def child_cost(steps: int, log_file: Path) -> list[float]:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from worker.progress import ProgressCallback

    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    receiver, sender = mp.Pipe(duplex=False)
    reader = threading.Thread(target=_drain, args=(receiver,), daemon=True)
    reader.start()
    callback = ProgressCallback(sender.send, lambda: 0)
    args = TrainingArguments(output_dir=str(log_file.parent / "out"), report_to=[], logging_steps=1)
    state, control = TrainerState(max_steps=steps, num_train_epochs=1), TrainerControl()
    callback.on_train_begin(args, state, control)
    costs = []
    for step in range(1, steps + 1):
        state.global_step, state.epoch, state.num_input_tokens_seen = step, step / steps, step * 2900
        logs = {"loss": 2.0 - step / steps, "grad_norm": 1.5, "learning_rate": 2e-4 * (1 - step / steps)}
        begin = time.perf_counter()
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs=logs)
        costs.append(time.perf_counter() - begin)
    sender.close()
    logging.getLogger().removeHandler(handler)
    return costs


def flush_cost(flushes: int, project: Path, events_per_flush: int) -> list[float]:
    from app import jobs
    from app.core.config import Settings
    from app.training_config import TrainingConfig
    from worker.events import JobEvents
    from worker.loop import Worker
    from worker.protocol import Metrics

    worker = Worker(Settings(project_dir=project, api_token=None))
    with worker.db.session() as session:
        jobs.create(session, TrainingConfig())
        job = jobs.claim_next(session, worker.worker_id, 60)
    assert job is not None
    recorder = JobEvents(job.id, "outputs")
    costs = []
    for step in range(1, flushes + 1):
        pending: dict[str, object] = {
            "step": step,
            "loss": 1.0 / step,
            "learning_rate": 2e-4,
            "epoch": step / flushes,
            "eta_seconds": 9.0,
        }
        begin = time.perf_counter()
        # The metrics events of the steps since the last flush, made and written with it (worker/loop.py).
        logs = {"loss": 1.0 / step, "grad_norm": 1.5, "learning_rate": 2e-4}
        found = [e for _ in range(events_per_flush) for e in recorder.observe(Metrics(step, step / flushes, logs))]
        if found:
            pending["new_events"] = found
        worker._flush(job, pending)
        costs.append(time.perf_counter() - begin)
    return costs


def _summary(costs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(costs, n=100)
    return {"median_us": round(q[49] * 1e6, 1), "p99_us": round(q[98] * 1e6, 1), "n": len(costs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--flushes", type=int, default=300)
    parser.add_argument("--step-ms", type=float, help="a step time to express the per-step cost against")
    parser.add_argument("--events-per-flush", type=int, default=2, help="metrics events written with each flush")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="forge-bench-progress-"))
    child = _summary(child_cost(args.steps, work / "training.log"))
    flush = _summary(flush_cost(args.flushes, work / "project", args.events_per_flush))
    result: dict[str, object] = {"per_step_in_training_process": child, "per_flush_in_worker": flush}
    # The worker flushes at most twice a second, so its share of one core is bounded by 2 x a flush.
    result["worker_core_share_at_2_flushes_per_s"] = round(2 * flush["median_us"] / 1e6, 5)
    if args.step_ms:
        result["step_ms"] = args.step_ms
        result["per_step_overhead_share"] = round(child["median_us"] / 1000 / args.step_ms, 6)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
