"""training.report_to: the trainer's metrics also written where TRL users look for them (TensorBoard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.training_config import TrainingConfig

# Inside the run folder: listed as artifacts of kind `log`.
TENSORBOARD_DIR = "logs/tensorboard"


class ReportingUnavailable(RuntimeError):
    code = "report_to_unavailable"


def callbacks(config: TrainingConfig, run_dir: Path) -> list[Any]:
    """Trainer callbacks for report_to, each writing into this job's run folder (not the trainer's output_dir,
    and not an environment variable: the training process runs one job after another)."""
    found: list[Any] = []
    if "tensorboard" in config.training.report_to:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ReportingUnavailable(
                f"training.report_to has 'tensorboard' but this worker cannot write TensorBoard files ({exc}); "
                "install tensorboard on the worker, or remove it from report_to"
            ) from exc
        from transformers.integrations import TensorBoardCallback

        found.append(TensorBoardCallback(SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))))
    return found
