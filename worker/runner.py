"""One job, in the spec's order: load model -> attach LoRA -> prepare data -> train -> save.

Runs in a child process of the worker, so a crash, a CUDA out-of-memory or a kill cannot take the worker
down; the process stays for the worker's next job while jobs end cleanly (`child_main`). It talks to the
worker through a pipe (progress, phases, the outcome) and watches a shared flag with which the worker asks it
to stop at the end of the current step: to cancel, or to shut down after saving a checkpoint the job resumes
from.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.models import JobPhase
from app.training_config import EMBEDDED_MODEL, TrainingConfig
from worker import chat_templates
from worker.data import prepare

log = logging.getLogger("forge.worker.job")


# Values of the shared stop flag.
RUN, CANCEL, SHUTDOWN = 0, 1, 2


class Stopped(Exception):
    """The worker asked this job to stop between steps."""

    def __init__(self, mode: int) -> None:
        super().__init__("cancel" if mode == CANCEL else "shutdown")
        self.mode = mode


class ModelNotFound(RuntimeError):
    code = "model_not_found"


class Diverged(RuntimeError):
    code = "diverged"


@dataclass
class JobSpec:
    job_id: str
    config: dict[str, Any]
    run_dir: str
    project_dir: str
    cache_dir: str
    resume_from: str | None = None


class JobRunner:
    def __init__(self, spec: JobSpec, conn: Any, stop_flag: Any) -> None:
        self.spec = spec
        self.config = TrainingConfig.model_validate(spec.config)
        self.run_dir = Path(spec.run_dir)
        self.project_dir = Path(spec.project_dir)
        self.conn = conn
        self.stop_flag = stop_flag

    def stop_mode(self) -> int:
        return int(self.stop_flag.value)

    # -- reporting ------------------------------------------------------------------------------------
    def report(self, message: dict[str, Any]) -> None:
        self.conn.send(message)

    def phase(self, phase: JobPhase) -> None:
        if self.stop_mode() != RUN:
            raise Stopped(self.stop_mode())
        log.info("phase: %s", phase.value)
        self.report({"type": "phase", "phase": phase.value})

    # -- steps ----------------------------------------------------------------------------------------
    def resolve_model(self) -> str:
        name = self.config.model.name
        if name == EMBEDDED_MODEL:
            from worker import embedded

            return str(embedded.model_dir(Path(self.spec.cache_dir)))
        path = Path(name).expanduser()
        local = path if path.is_absolute() else self.project_dir / path
        if (local / "config.json").is_file():
            return str(local)
        if name.startswith(("/", ".", "~")):
            raise ModelNotFound(f"model.name {name!r}: no model folder (config.json) at {local}")
        return name  # a hub id: transformers finds it in the local cache or downloads it

    def run(self) -> dict[str, Any]:
        from worker import backends

        started = time.monotonic()
        backend = backends.select(self.config.backend)  # before transformers: Unsloth patches it on import
        import datasets
        from transformers import PrinterCallback
        from transformers.utils import logging as hf_logging

        from worker.progress import ProgressCallback
        from worker.training_args import sft_config

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        self.report({"type": "backend", "backend": backend.name})
        log.info("backend: %s", backend.name)

        self.phase(JobPhase.loading_model)
        model_path = self.resolve_model()
        try:
            model, tokenizer = backend.load_model(model_path, self.config)
        except OSError as exc:
            raise ModelNotFound(
                f"could not load model {self.config.model.name!r}: {exc}. Use {EMBEDDED_MODEL!r}, a local "
                "folder, or a hub id already in this worker's Hugging Face cache"
            ) from exc

        self.phase(JobPhase.attaching_lora)
        model = backend.attach_lora(model, self.config)

        self.phase(JobPhase.preparing_data)
        data = prepare(tokenizer, chat_templates.for_job(self.config, model_path), self.config, self.project_dir)
        dataset, eval_dataset = backend.prepare_data(data)
        log.info("data: %s", json.dumps(data.stats))

        self.phase(JobPhase.training)
        progress = ProgressCallback(self.report, self.stop_mode)
        args = sft_config(self.config, self.run_dir, evaluate=eval_dataset is not None)
        trainer = backend.make_trainer(model, tokenizer, dataset, args, [progress], eval_dataset)
        trainer.remove_callback(PrinterCallback)  # progress goes to logs/training.log and the worker instead
        resume = str(self.run_dir / self.spec.resume_from) if self.spec.resume_from else None
        if resume:
            log.info("resuming from %s", resume)
        output = trainer.train(resume_from_checkpoint=resume)
        if progress.diverged:
            raise Diverged(progress.diverged)
        if progress.stopped_by is not None:
            raise Stopped(progress.stopped_by)

        self.phase(JobPhase.saving)
        save = self.config.save
        lora_path = self.run_dir / save.lora_path
        backend.save_lora(model, tokenizer, str(lora_path))
        self.report({"type": "checkpoint"})
        exports: dict[str, str] = {"lora": save.lora_path}
        if save.merged_path:
            backend.save_merged(model, tokenizer, str(self.run_dir / save.merged_path), model_path, str(lora_path))
            exports["merged"] = save.merged_path
        if save.gguf_path:
            exports["gguf"] = "not exported: GGUF export is not part of this version of the service yet"
            log.warning("save.gguf_path is set but GGUF export is not available yet; skipped")

        metrics = output.metrics
        steps = int(trainer.state.global_step)
        seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
        runtime = float(metrics.get("train_runtime", 0.0))
        stats = {
            "backend": backend.name,
            "model": self.config.model.name,
            "model_path": model_path,
            "steps": steps,
            "epochs": float(trainer.state.epoch or 0.0),
            "train_loss": float(metrics.get("train_loss", float("nan"))),
            "final_loss": next((e["loss"] for e in reversed(progress.log_history) if "loss" in e), None),
            "train_runtime_seconds": round(runtime, 3),
            "tokens_seen": seen,
            "tokens_per_second": round(seen / runtime, 1) if runtime > 0 and seen else None,
            "wall_seconds": round(time.monotonic() - started, 3),
            "peak_gpu_memory_gib": _peak_gpu_memory_gib(),
            "data": data.stats,
            "eval_loss": next((e["eval_loss"] for e in reversed(progress.log_history) if "eval_loss" in e), None),
            "exports": exports,
            "log_history": progress.log_history,
        }
        metrics_dir = self.run_dir / "metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        (metrics_dir / "training-stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        return stats


def _peak_gpu_memory_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _setup_logging(run_dir: Path) -> logging.Handler:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "training.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _classify(exc: BaseException) -> tuple[str, str]:
    """A code and a message a user can act on."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code, str(exc)
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "out_of_memory", (
            f"the GPU ran out of memory ({exc}). Reduce training.per_device_train_batch_size and raise "
            "training.gradient_accumulation_steps, or lower model.max_seq_length"
        )
    return "training_failed", f"{name}: {exc}"


def child_main(conn: Any, stop_flag: Any) -> None:
    """Entry point of the training child process: the jobs the worker sends, one at a time.

    The process outlives a job: the next one on the same backend skips importing Unsloth and, with the
    compiled kernels still in memory, most of the compiling. After a job that did not end cleanly (a failure,
    a shutdown) it exits, so that a broken CUDA context or a half-patched library never meets the next job.
    """
    # Ctrl-C in a terminal reaches the whole process group; the worker decides when a job stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    jobs_run = 0
    while True:
        try:
            spec = conn.recv()
        except EOFError:  # the worker closed the pipe: it retires this process
            return
        # Compiled kernels (Unsloth compiles every decoder layer) kept with the worker's other caches, which a
        # container keeps on a volume: a new process on this machine skips most of the minutes of compiling.
        compile_cache = Path(spec.cache_dir) / "compile"
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(compile_cache / "triton"))
        reusable = run_one(spec, conn, stop_flag, warm=jobs_run > 0)
        jobs_run += 1
        if not reusable:
            conn.close()
            return


def run_one(spec: JobSpec, conn: Any, stop_flag: Any, warm: bool) -> bool:
    """Run one job and send its outcome; True when this process is fit for another job."""
    run_dir = Path(spec.run_dir)
    handler = _setup_logging(run_dir)
    runner = JobRunner(spec, conn, stop_flag)
    reusable = False
    try:
        stats = runner.run()
        stats["warm_start"] = warm
    except Stopped as stop:
        if stop.mode == SHUTDOWN:
            from app.checkpoints import in_run

            checkpoint = in_run(run_dir, runner.config.training.output_dir) or spec.resume_from
            log.info("stopped for a worker shutdown; resumes from %s", checkpoint or "the start")
            conn.send({"type": "interrupted", "checkpoint": checkpoint})
        else:
            log.info("cancelled at the worker's request")
            conn.send({"type": "stopped"})
            reusable = True
    except BaseException as exc:
        log.error("job failed:\n%s", traceback.format_exc())
        code, message = _classify(exc)
        conn.send({"type": "failed", "code": code, "message": message})
    else:
        log.info("done: %d steps, final loss %s", stats["steps"], stats["final_loss"])
        conn.send({"type": "succeeded", "result": {k: v for k, v in stats.items() if k != "log_history"}})
        reusable = True
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        del runner
        _release_memory()
    return reusable


def _release_memory() -> None:
    """Give back what the finished job held (model, optimizer state, cached CUDA blocks) before the next one."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
