"""What a job's config points at, resolved in the training process: the model, its chat template, the test split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from app import files
from app.datasets.templates import ChatTemplate
from app.training_config import EMBEDDED_MODEL, TrainingConfig
from worker import chat_templates, evaluation
from worker.data import DataError
from worker.evaluation import TestExample
from worker.protocol import JobSpec

log = logging.getLogger("forge.worker.job")


class ModelNotFound(RuntimeError):
    code = "model_not_found"


@dataclass(frozen=True)
class Setup:
    config: TrainingConfig
    project_dir: Path
    model_path: str  # a local folder, or a hub id
    template: ChatTemplate

    @classmethod
    def of(cls, spec: JobSpec, config: TrainingConfig) -> Setup:
        project = Path(spec.project_dir)
        model_path = _model_path(config.model.name, project, Path(spec.cache_dir))
        return cls(config, project, model_path, chat_templates.for_job(config, model_path))

    def test_split(self) -> list[TestExample] | None:
        """The whole test split, read once for the baseline, evaluate and export steps (None: none is needed)."""
        settings = self.config.evaluation
        path = (self.project_dir / settings.test_path).resolve()
        if settings.baseline or settings.evaluate:
            if not path.is_file():
                raise DataError(
                    f"evaluation.test_path {settings.test_path!r} does not exist ({path}); run Phase 3 (split) "
                    "first, or set evaluation.baseline and evaluation.evaluate to false"
                )
            glossary = (
                evaluation.load_glossary(self.project_dir / settings.glossary_path) if settings.glossary_path else []
            )
            examples = evaluation.read_test_split(path, settings.terms_field, glossary)
            log.info("test set: %d examples from %s", len(examples), settings.test_path)
            return examples
        return self.gguf_test_split()

    def gguf_test_split(self) -> list[TestExample] | None:
        """The test split a GGUF export scores its files on, when it exists."""
        path = (self.project_dir / self.config.evaluation.test_path).resolve()
        if not self.config.save.gguf_types or not path.is_file():
            return None
        return evaluation.read_test_split(path, self.config.evaluation.terms_field)


def _model_path(name: str, project: Path, cache_dir: Path) -> str:
    if name == EMBEDDED_MODEL:
        from worker import embedded

        return str(embedded.model_dir(cache_dir))
    path = files.expand_home(name)
    local = path if path.is_absolute() else project / path
    if (local / "config.json").is_file():
        return str(local)
    if name.startswith(("/", ".", "~")):
        raise ModelNotFound(f"model.name {name!r}: no model folder (config.json) at {local}")
    return name  # a hub id: transformers finds it in the local cache or downloads it
