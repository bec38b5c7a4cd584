"""Everything that crosses the pipe between the worker loop (worker/loop.py) and its training process
(worker/child.py): the job sent down, the messages sent back, and the values of the shared stop flag.

The whole vocabulary is here, closed: the loop matches on these classes, the training process and its progress
callback send nothing else. They travel pickled through a multiprocessing pipe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from app.models import JobKind


class StopMode(enum.IntEnum):
    """The shared stop flag (a multiprocessing.Value of type "i"), set by the worker, read by the job."""

    RUN = 0  #: Go on working.
    CANCEL = 1  #: Stop at the end of the current step and end the job as cancelled; nothing is saved.
    SHUTDOWN = 2  #: The worker is stopping: save a checkpoint of this step and end, for the job to resume later.


@dataclass
class JobSpec:
    """One job, as the worker hands it to the training process."""

    job_id: str
    config: dict[str, Any]  # the validated TrainingConfig, as the job's row holds it
    run_dir: str
    project_dir: str
    cache_dir: str
    resume_from: str | None = None  # a checkpoint folder relative to run_dir
    kind: str = JobKind.training.value
    source_run_dir: str | None = None  # an export job's source: the training job's run folder
    model_dirs: list[str] = field(default_factory=list)  # FORGE_MODEL_DIRS, where a model folder may be
    accepted_job_id: str | None = None  # the project's accepted model at the claim: no-regression compares with it
    claimed_at: float | None = None  # the worker's claim (wall time): the `starting` phase ends at the first phase


@dataclass
class Preload:
    """Load and LoRA-wrap the model of this (job-less) spec's config and keep it for the jobs that fit it
    (FORGE_WORKER_PRELOAD, worker/warm_model.py); nothing is sent back."""

    spec: JobSpec


@dataclass
class Warmup:
    """Import the training stack of this backend setting ("auto", "unsloth", "transformers") before any job
    (FORGE_WORKER_START_AHEAD), its compile caches under `cache_dir`; nothing is sent back."""

    backend: str
    cache_dir: str


# -- from the training process to the worker ------------------------------------------------------------------


@dataclass
class PhaseStarted:
    """The job entered a phase of the spec (a JobPhase value); the previous phase's progress line ends."""

    phase: str


@dataclass
class Progress:
    """How far the job is; only the fields that are not None change the job's row."""

    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    total_epochs: float | None = None
    eta_seconds: float | None = None
    tokens_per_second: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    phase_progress: float | None = None  # the fraction of the current phase done (0-1)
    phase_detail: str | None = None  # what the current phase is doing now

    def changes(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass
class PartialResult:
    """What the job knows before it ends (baseline metrics, evaluation progress, the batch plan): its `result`."""

    result: dict[str, Any]


@dataclass
class BackendChosen:
    """The training backend the job runs on (`unsloth` or `transformers`)."""

    backend: str


@dataclass
class Metrics:
    """Everything the trainer logged at a step (loss, learning_rate, grad_norm, eval_loss, ...): a job event."""

    step: int
    epoch: float
    logs: dict[str, Any]


@dataclass
class CheckpointSaved:
    """A checkpoint is saved: a trainer checkpoint `name` (checkpoint-N, in output_dir) at `step`, or with
    neither the LoRA adapters at the end of training (`path`, in the run folder); or, with `score`, the model at
    `step` is scored for training.select_checkpoint."""

    step: int | None = None
    name: str | None = None
    path: str | None = None
    metric: str | None = None  # with `score`: the checkpoint at `step` scored on the validation split
    score: float | None = None


@dataclass
class Succeeded:
    """The job is done; `result` is its stats, as the job's row keeps them."""

    result: dict[str, Any]


@dataclass
class Failed:
    """The job failed; `code` and `message` are what the user sees."""

    code: str
    message: str


@dataclass
class Stopped:
    """The job stopped for a cancel; the process is fit for the next job."""


@dataclass
class Interrupted:
    """The job stopped for a worker shutdown; it resumes from `checkpoint` (relative to the run folder, None:
    from the start)."""

    checkpoint: str | None


Update = PhaseStarted | Progress | Metrics | PartialResult | BackendChosen | CheckpointSaved
"""A message sent while the job runs."""
Outcome = Succeeded | Failed | Stopped | Interrupted
"""The last message of a job."""
Message = Update | Outcome


class StopRequested(Exception):
    """Raised in the training process when the worker set the stop flag: the job ends at this step."""

    def __init__(self, mode: StopMode) -> None:
        super().__init__(mode.name.lower())
        self.mode = mode
