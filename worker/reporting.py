"""training.report_to: the trainer's metrics also written where TRL users look for them (TensorBoard, MLflow)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.run_folder import RunFolder
from app.training_config import TrainingConfig

# MLflow 3 keeps a local store in SQLite (its file: store is in maintenance mode and refuses to start): one file per
# project, beside the status file, when MLFLOW_TRACKING_URI does not name another store.
MLFLOW_STORE = ".factory/mlflow.db"
MLFLOW_EXPERIMENT = "forge-trainer"


class ReportingUnavailable(RuntimeError):
    code = "report_to_unavailable"


def _missing(name: str, package: str, exc: ImportError) -> ReportingUnavailable:
    return ReportingUnavailable(
        f"training.report_to has {name!r} but this worker cannot import {package} ({exc}); "
        f"install {package} on the worker, or remove {name!r} from report_to"
    )


def callbacks(config: TrainingConfig, folder: RunFolder, job_id: str, project: Path) -> list[Any]:
    """Trainer callbacks for report_to. TensorBoard writes into the job's run folder (RunFolder.tensorboard);
    MLflow logs one run per job, named by the job id, to MLFLOW_TRACKING_URI (default: MLFLOW_STORE in the
    project). Not through environment variables set per job: the training process runs one job after another."""
    found: list[Any] = []
    if "tensorboard" in config.training.report_to:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard", "tensorboard", exc) from exc
        from transformers.integrations import TensorBoardCallback

        found.append(TensorBoardCallback(SummaryWriter(log_dir=str(folder.tensorboard))))
    if "mlflow" in config.training.report_to:
        found.append(_mlflow(job_id, project))
    return found


def _mlflow(job_id: str, project: Path) -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise _missing("mlflow", "mlflow", exc) from exc
    from transformers.integrations import MLflowCallback

    if mlflow.active_run() is not None:  # a run the previous job left open (it crashed): never log into it
        mlflow.end_run(status="KILLED")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store = project / MLFLOW_STORE
        store.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{store.resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or MLFLOW_EXPERIMENT)

    class JobRun(MLflowCallback):  # type: ignore[misc]
        """MLflow's own callback (it logs every metric at its step), with the job id as the run's name."""

        def setup(self, args: Any, state: Any, model: Any) -> None:
            args.run_name = job_id
            super().setup(args, state, model)

    return JobRun()
