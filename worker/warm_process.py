"""The training process a worker keeps between jobs, and the model it loads before any job asks for it.

A clean job leaves its process warm for the next one (imports done, kernels compiled, and the loaded model kept:
worker/warm_model.py) for FORGE_WORKER_KEEP_WARM_SECONDS. A process that imported Unsloth has patched
transformers for good, so a job asking for another backend gets a process of its own; a job on several GPUs gets
ranks of its own under torchrun (worker/distributed.py), on the same lease clock.

With FORGE_WORKER_PRELOAD (a model name, or a job config file whose model and lora sections jobs will use) the
worker starts a process at once that loads and wraps that model, and keeps one ready whenever it is idle. Without
it, a worker where the "auto" backend is Unsloth starts its process at once all the same, to import the training
stack (about 25 s) before the first job comes (FORGE_WORKER_START_AHEAD), kept like any warm process.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from app.core.config import Settings
from app.models import Job
from app.resolve import model_source
from app.training_config import TrainingConfig
from worker import distributed
from worker.backends import imported_by
from worker.lease import LeaseClock
from worker.protocol import JobSpec, Preload, Warmup
from worker.supervision import TrainingProcess
from worker.warm_model import PRELOADED

log = logging.getLogger("forge.worker")


class PreloadInvalid(ValueError):
    """FORGE_WORKER_PRELOAD names no model this worker can load; the worker does not start."""


def preload_spec(settings: Settings) -> JobSpec | None:
    """The job-less spec FORGE_WORKER_PRELOAD asks for, checked now: a typo stops the worker at start."""
    value = settings.worker_preload
    if not value:
        return None
    try:
        if Path(value).suffix in (".json", ".yaml", ".yml"):
            body = yaml.safe_load(Path(value).read_text(encoding="utf-8"))  # JSON is YAML
            config = TrainingConfig.model_validate(body)
        else:
            config = TrainingConfig.model_validate({"model": {"name": value}})
        source = model_source(config.model.name, settings.resolved_project_dir, settings.model_dirs, "model.name")
        if source.kind == "hub" and not _in_hub_cache(str(source.hub_id)):
            raise ValueError(f"{source.hub_id!r} is neither a model folder nor in this machine's Hugging Face cache")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PreloadInvalid(
            f"FORGE_WORKER_PRELOAD={value!r}: {exc}. Give a model name (as in a job's model.name) or the path of a "
            "job config file (.json or .yaml) whose model and lora sections the jobs to come use"
        ) from exc
    return JobSpec(
        job_id=PRELOADED,
        config=config.model_dump(mode="json"),
        run_dir="",
        project_dir=str(settings.resolved_project_dir),
        cache_dir=str(settings.cache_dir),
        model_dirs=[str(d) for d in settings.model_dirs],
    )


def _in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except ValueError:  # a name the hub client refuses
        return False


class WarmProcess:
    """The worker's current training process: reused, replaced, retired when idle, or started ahead of jobs."""

    def __init__(self, context: Any, lease: LeaseClock, settings: Settings, gpus: list[int]) -> None:
        self.context, self.lease, self.settings, self.gpus = context, lease, settings, gpus
        self.preload = preload_spec(settings)
        self.current: TrainingProcess | None = None

    def start_ahead(self) -> None:
        """At the worker's start, without a preload: a training process that imports the "auto" backend's
        training stack while no job waits (FORGE_WORKER_START_AHEAD; default: where that backend is Unsloth)."""
        backend = imported_by("auto", bool(self.gpus))
        wanted = self.settings.worker_start_ahead
        if wanted is None:
            wanted = backend == "unsloth"
        if not wanted or self.preload is not None or self.settings.worker_keep_warm_seconds <= 0:
            return
        self.current = TrainingProcess.spawn(self.context, self.lease, backend)
        self.current.conn.send(Warmup("auto", str(self.settings.cache_dir)))
        self.current.idle_since = time.monotonic()
        pid = self.current.process.pid
        log.info("started the training process ahead of the first job (pid %s): importing %s", pid, backend)

    def for_job(self, job: Job, spec: JobSpec) -> TrainingProcess:
        """The warm process when it fits this job (the same backend, one process), else a fresh one."""
        backend = imported_by(job.training_config.backend, bool(self.gpus))
        ranks, child = distributed.ranks_for(job, self.gpus), self.current
        if ranks == 1 and child is not None and child.takes(backend):
            log.info("reusing the warm training process (pid %s)", child.process.pid)
            return child
        self.retire()
        # Started from the main thread: the training process's parent-death signal is tied to this thread.
        if ranks > 1:
            self.current = distributed.launch(spec, backend, ranks, self.gpus, self.lease)
        else:
            self.current = TrainingProcess.spawn(self.context, self.lease, backend)
        return self.current

    def after_job(self, child: TrainingProcess, clean: bool, stopping: bool) -> None:
        """Keep the process warm after a clean job; otherwise end it (and collect its exit code)."""
        if not clean or not child.reusable or self.settings.worker_keep_warm_seconds <= 0 or stopping:
            self.retire()
        else:
            child.idle_since = time.monotonic()

    def idle(self) -> None:
        """No job to run: end a process idle too long, or, with a preload, have one ready."""
        child = self.current
        if self.preload is not None:
            if child is None or not child.process.is_alive():
                self.retire()
                config = TrainingConfig.model_validate(self.preload.config)
                log.info("pre-loading %s in a new training process", config.model.name)
                backend = imported_by(config.backend, bool(self.gpus))
                self.current = TrainingProcess.spawn(self.context, self.lease, backend)
                self.current.conn.send(Preload(self.preload))
        elif child is not None and time.monotonic() - child.idle_since > self.settings.worker_keep_warm_seconds:
            log.info("the warm training process was idle for %.0fs; ending it", self.settings.worker_keep_warm_seconds)
            self.retire()

    def retire(self) -> None:
        child, self.current = self.current, None
        if child is None:
            return
        child.conn.close()  # the child's next read ends: it exits
        child.process.join(timeout=30)
        if child.process.is_alive():
            child.process.kill()
            child.process.join()
