"""The training child process: the jobs the worker sends through the pipe, run one at a time.

A crash, a CUDA out-of-memory or a kill in here cannot take the worker down. The process stays for the worker's
next job while jobs end cleanly; each job's outcome (worker.protocol) is its last message, and its log goes to
the run folder's logs/training.log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import traceback
from pathlib import Path
from typing import Any

from app.core.config import get_settings
from app.models import JobKind
from app.run_folder import RunFolder
from app.training_config import TrainingConfig
from worker import backends, batch_size, devices, faults, lease, warm_model
from worker.protocol import (
    Failed,
    Interrupted,
    JobSpec,
    Preload,
    StopMode,
    Stopped,
    StopRequested,
    Succeeded,
    Warmup,
)
from worker.reporter import Reporter

log = logging.getLogger("forge.worker.job")


def child_main(conn: Any, stop_flag: Any, lease_deadline: Any = None) -> None:
    """Entry point of the training child process.

    The process outlives a job: the next one on the same backend skips importing Unsloth and, with the
    compiled kernels still in memory, most of the compiling. After a job that did not end cleanly (a failure,
    a shutdown) it exits, so that a broken CUDA context or a half-patched library never meets the next job.
    """
    prepare_process(lease_deadline)
    jobs_run = 0
    while True:
        try:
            spec = conn.recv()
        except EOFError:  # the worker closed the pipe: it retires this process
            return
        if isinstance(spec, Preload):  # before any job: load the configured model, nothing to answer
            use_compile_cache(spec.spec.cache_dir)
            warm_model.preload(spec.spec)
            continue
        if isinstance(spec, Warmup):  # before any job: import the training stack, nothing to answer
            use_compile_cache(spec.cache_dir)
            warm_up(spec.backend)
            continue
        use_compile_cache(spec.cache_dir)
        reusable = run_one(spec, conn, stop_flag, warm=jobs_run > 0)
        jobs_run += 1
        if not reusable:
            conn.close()
            return


def prepare_process(lease_deadline: Any, parent_pid: int | None = None) -> None:
    """What a training process (or a DDP rank, started by `parent_pid`) sets up before its first job."""
    # First of all: die with the worker, or when its lease can no longer be proved (worker/lease.py).
    lease.guard(lease_deadline, parent_pid)
    # Ctrl-C in a terminal reaches the whole process group; the worker decides when a job stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


COMPILE_JOB_ID = "forge-trainer"  # Dynamo's profile-guided compiling is keyed by a job id, and off without one


def use_compile_cache(cache_dir: str) -> None:
    """Compiled kernels (Unsloth compiles every decoder layer) kept with the worker's other caches, which a
    container keeps on a volume: a new process on this machine skips most of the minutes of compiling.

    Besides Inductor's and Triton's kernels, Dynamo's profile of which input dimensions changed (the packed
    sequence length of every step) is kept there too (its local PGO, on only with a job id): a restarted worker
    compiles those dimensions dynamic at once, instead of compiling a static graph first and again at the second
    length it sees."""
    compile_cache = Path(cache_dir) / "compile"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(compile_cache / "triton"))
    os.environ.setdefault("TORCH_COMPILE_JOB_ID", COMPILE_JOB_ID)
    import torch  # its config reads the job id at import; set it again where torch came in first

    if torch.compiler.config.job_id is None:
        torch.compiler.config.job_id = os.environ["TORCH_COMPILE_JOB_ID"]


def warm_up(backend: str) -> None:
    """Import what a job of `backend` runs on (Unsloth's patches, transformers, TRL, datasets) while no job waits:
    the first job's `starting` phase then skips them. A backend that cannot load is left to that job to report,
    with its error code."""
    try:
        backends.select(backend)
    except backends.BackendUnavailable:
        return
    torch_logs(get_settings().torch_logs)
    import trl  # noqa: F401  (its trainer)

    import worker.recipe  # noqa: F401


def torch_logs(wanted: str | None) -> None:
    """FORGE_TORCH_LOGS: torch's logs of this process (`recompiles`, `graph_breaks`, `+dynamo`, ... as TORCH_LOGS
    takes them) to its stderr, the worker's log. Set after the backend's import, which silences them (Unsloth)."""
    if wanted:
        from torch._logging._internal import _init_logs

        os.environ["TORCH_LOGS"] = wanted
        _init_logs()


def run_job(spec: JobSpec, reporter: Reporter) -> dict[str, Any]:
    """The job's result (its stats), by the recipe of its kind."""
    if spec.kind == JobKind.export:
        from worker.export_job import ExportJob

        return ExportJob(spec, reporter).run()
    from worker.recipe import LoraRecipe

    return LoraRecipe(spec, reporter).run().as_stats()


def run_one(spec: JobSpec, conn: Any, stop_flag: Any, warm: bool) -> bool:
    """Run one job and send its outcome; True when this process is fit for another job."""
    run = RunFolder(Path(spec.run_dir), TrainingConfig.model_validate(spec.config))
    handler = log_to(run.log_file)
    reporter = Reporter(conn, stop_flag)
    reusable = False
    try:
        warm_up(run.config.backend)  # Unsloth first: it patches transformers, which the recipe imports
        stats = run_job(spec, reporter)
        stats["warm_start"] = warm
    except StopRequested as stop:
        if stop.mode == StopMode.SHUTDOWN:
            checkpoint = run.latest_checkpoint() or spec.resume_from
            log.info("stopped for a worker shutdown; resumes from %s", checkpoint or "the start")
            conn.send(Interrupted(checkpoint))
        else:
            log.info("cancelled at the worker's request")
            conn.send(Stopped())
            reusable = True
    except BaseException as exc:
        log.error("job failed:\n%s", traceback.format_exc())
        code, message = faults.disk_full(exc, run.root) or classify(exc)  # a full disk gets its own advice
        conn.send(Failed(code, message))
    else:
        log.info("done: %s", json.dumps({k: stats.get(k) for k in ("kind", "steps", "final_loss", "exports")}))
        conn.send(Succeeded({k: v for k, v in stats.items() if k != "log_history"}))
        reusable = True
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        del reporter
        devices.free_memory()
    return reusable


def classify(exc: BaseException) -> tuple[str, str]:
    """A code and a message a user can act on."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code, str(exc)
    name = type(exc).__name__
    if batch_size.out_of_memory(exc):
        return "out_of_memory", (
            f"the job ran out of memory ({name}: {exc}). Reduce training.per_device_train_batch_size and raise "
            'training.gradient_accumulation_steps (or set the batch to "auto" to have it measured), or lower '
            "model.max_seq_length"
        )
    return "training_failed", f"{name}: {exc}"


def log_to(log_file: Path) -> logging.Handler:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler
