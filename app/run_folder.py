"""Every path inside a job's run folder, runs/<job_id>/: one owner, so no module spells one by hand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from app.core.errors import InvalidInput
from app.files import PARTIAL
from app.training_config import TrainingConfig

if TYPE_CHECKING:
    from app.models import Job

Stage = Literal["baseline", "evaluate"]
# The Ollama Modelfile beside each GGUF: model-Q8_0.gguf -> model-Q8_0.Modelfile (artifact kind `modelfile`).
MODELFILE_SUFFIX = ".Modelfile"


class RunFolder:
    """runs/<job_id>/ and what a job writes there; save paths and output_dir come from the job's config."""

    def __init__(self, root: Path, config: TrainingConfig) -> None:
        self.root = root
        self.config = config

    @classmethod
    def of(cls, runs_dir: Path, job: Job) -> RunFolder:
        return cls(runs_dir / job.id, job.training_config)

    # -- logs and metrics ---------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tensorboard(self) -> Path:
        """training.report_to tensorboard's event files: artifacts of kind `log`."""
        return self.logs / "tensorboard"

    @property
    def log_file(self) -> Path:
        return self.logs / "training.log"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics(self, stage: Stage) -> Path:
        """The baseline's or the evaluate step's scores on the test split."""
        return self.metrics_dir / ("baseline.json" if stage == "baseline" else "evaluation.json")

    @property
    def samples(self) -> Path:
        return self.metrics_dir / "samples.jsonl"

    @property
    def gates(self) -> Path:
        return self.metrics_dir / "gates.json"

    @property
    def batch_size(self) -> Path:
        return self.metrics_dir / "batch-size.json"

    @property
    def checkpoints_report(self) -> Path:
        """training.select_checkpoint best: every scored checkpoint and the one picked."""
        return self.metrics_dir / "checkpoints.json"

    @property
    def best_weights(self) -> Path:
        """The best-scored checkpoint's LoRA weights so far (a resumed job keeps them)."""
        return self.output_dir / "best-checkpoint-lora.pt"

    @property
    def loss_plot(self) -> Path:
        return self.metrics_dir / "loss.png"

    @property
    def training_stats(self) -> Path:
        return self.metrics_dir / "training-stats.json"

    @property
    def export_stats(self) -> Path:
        return self.metrics_dir / "export-stats.json"

    @property
    def quantization(self) -> Path:
        return self.metrics_dir / "quantization.json"

    @property
    def release(self) -> Path:
        """The release record of a finished job (app/release.py): what it used and made, hashed."""
        return self.root / "release.json"

    # -- models -------------------------------------------------------------------------------------------
    @property
    def lora(self) -> Path:
        return self.root / self.config.save.lora_path

    @property
    def merged(self) -> Path | None:
        """The merged model kept as an artifact (save.merged_path), if asked for."""
        return self.root / self.config.save.merged_path if self.config.save.merged_path else None

    @property
    def merged_or_scratch(self) -> Path | None:
        """Where the merged model is written: save.merged_path, or a scratch folder (never an artifact) when only
        GGUF files are wanted; None when neither is."""
        if self.merged is not None:
            return self.merged
        return self.root / f"models/merged{PARTIAL}" if self.config.save.gguf_types else None

    @property
    def gguf_dir(self) -> Path | None:
        return self.root / self.config.save.gguf_path if self.config.save.gguf_path else None

    def modelfile(self, gguf_file: Path) -> Path:
        """The Ollama Modelfile for a GGUF file, beside it (`FROM ./<the GGUF>` works from any folder)."""
        return gguf_file.with_suffix(MODELFILE_SUFFIX)

    # -- training checkpoints -----------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        """The trainer's scratch folder: checkpoint-N folders."""
        return self.root / self.config.training.output_dir

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint, relative to the run folder (what a resumed attempt starts from)."""
        from app.checkpoints import latest_complete

        latest = latest_complete(self.output_dir)
        return self.relative(latest) if latest else None

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def checkpoint_finder(runs_dir: Path, named: str | None = None) -> Callable[[Job], str | None]:
    """For app.jobs: a job's newest complete checkpoint under `runs_dir`, to resume a lost or stopped job from;
    with `named` (checkpoint-N), that one, which must be complete (a 422 naming it otherwise)."""
    if named is None:
        return lambda job: RunFolder.of(runs_dir, job).latest_checkpoint()

    def find(job: Job) -> str | None:
        from app.checkpoints import is_complete

        folder = RunFolder.of(runs_dir, job)
        if not is_complete(folder.output_dir / named):
            raise InvalidInput(
                f"job {job.id} has no complete checkpoint {named!r} (one with weights, optimizer, scheduler and "
                f"state); GET /api/training/jobs/{job.id}/checkpoints lists its checkpoints",
                code="no_such_checkpoint",
                param="checkpoint",
            )
        return folder.relative(folder.output_dir / named)

    return find
