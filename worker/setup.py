"""What a job's config points at, resolved once in the training process by the API's own rules (app.resolve)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from app.datasets.templates import ChatTemplate
from app.resolve import Resolved, resolve
from app.run_folder import RunFolder
from app.training_config import TrainingConfig
from worker import evaluation
from worker.evaluation import TestExample
from worker.protocol import JobSpec

log = logging.getLogger("forge.worker.job")


@dataclass(frozen=True)
class Setup:
    """A job's config, what it points at, and its run folder."""

    config: TrainingConfig
    resolved: Resolved
    model_path: str  # what the backend loads: a model folder, or a hub id
    run: RunFolder

    @classmethod
    def of(cls, spec: JobSpec) -> Setup:
        config = TrainingConfig.model_validate(spec.config)
        resolved = resolve(config, project=Path(spec.project_dir), model_dirs=[Path(d) for d in spec.model_dirs])
        model_path = resolved.model.load_path(Path(spec.cache_dir))
        return cls(config, resolved, model_path, RunFolder(Path(spec.run_dir), config))

    @property
    def template(self) -> ChatTemplate:
        return self.resolved.template

    def test_split(self) -> list[TestExample] | None:
        """The whole test split, read once for the baseline, evaluate and export steps (None: none is scored)."""
        if self.resolved.test is None:
            return None
        settings = self.config.evaluation
        scored = settings.baseline or settings.evaluate
        glossary = evaluation.load_glossary(self.resolved.glossary) if scored and self.resolved.glossary else []
        slice_field = self.config.gates.slice_field
        examples = evaluation.read_test_split(self.resolved.test, settings.terms_field, glossary, slice_field)
        log.info("test set: %d examples from %s", len(examples), settings.test_path)
        return examples
