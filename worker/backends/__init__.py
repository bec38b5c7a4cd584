"""Training backends behind one small interface; nothing outside this package asks which one runs.

`select` must run before anything imports transformers: Unsloth patches it on import.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

from app.datasets.templates import ChatTemplate
from app.training_config import TrainingConfig
from worker.data import Prepared


class BackendUnavailable(RuntimeError):
    code = "backend_unavailable"


class Backend(Protocol):
    name: str

    def load_model(self, model_path: str, config: TrainingConfig, template: ChatTemplate) -> tuple[Any, Any]:
        """Base model and tokenizer, with the job's chat template installed on it."""
        ...

    def attach_lora(self, model: Any, config: TrainingConfig) -> Any: ...

    def prepare_data(self, data: Prepared) -> tuple[Any, Any | None]:
        """Train and eval datasets.Dataset of the prepared token ids, in the form the trainer below takes."""
        ...

    def make_trainer(
        self, model: Any, tokenizer: Any, dataset: Any, args: Any, callbacks: list[Any], eval_dataset: Any = None
    ) -> Any: ...

    def save_lora(self, model: Any, tokenizer: Any, path: str) -> None: ...

    def for_inference(self, model: Any) -> None:
        """Ready the model for generation and scoring (the baseline and evaluate steps)."""
        ...

    def for_training(self, model: Any, config: TrainingConfig) -> None:
        """Back to training mode after for_inference."""
        ...

    def save_merged(self, model: Any, tokenizer: Any, path: str, model_path: str, lora_path: str) -> None: ...


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def imported_by(name: str, gpus: bool) -> str:
    """Which backend a training process asked for `name` runs ("unsloth" or "transformers") on a worker with or
    without GPUs, as `select` picks it, told without importing either. A process that imported Unsloth keeps its
    patches, so only jobs that name the same one share a process."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    return "unsloth" if name == "unsloth" or (name == "auto" and has_unsloth and gpus) else "transformers"


def select(name: str) -> Backend:
    if name == "unsloth" and importlib.util.find_spec("unsloth") is None:
        raise BackendUnavailable(
            "backend 'unsloth' needs the `gpu` extra on the worker (pip install 'forge-trainer[gpu]'); "
            "use backend 'auto' or 'transformers' to train without it"
        )
    cuda = _cuda()
    if name == "unsloth" and not cuda:
        raise BackendUnavailable("backend 'unsloth' needs a CUDA GPU and this worker has none")
    if imported_by(name, cuda) == "unsloth":
        from worker.backends.unsloth_backend import UnslothBackend

        return UnslothBackend()
    from worker.backends.transformers_backend import TransformersBackend

    return TransformersBackend()
