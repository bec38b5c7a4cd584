"""An export job (kind `export`): a finished training job's LoRA adapters merged into the base model again and
exported in other formats, without training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.models import JobPhase
from app.training_config import TrainingConfig
from worker import evaluation, export
from worker.gguf import ExportError
from worker.protocol import JobSpec
from worker.reporter import Reporter
from worker.setup import Setup


class ExportJob:
    def __init__(self, spec: JobSpec, reporter: Reporter) -> None:
        self.spec = spec
        self.config = TrainingConfig.model_validate(spec.config)
        self.run_dir = Path(spec.run_dir)
        self.reporter = reporter

    def run(self) -> dict[str, Any]:
        """merge -> export -> verify -> gate; the stats of metrics/export-stats.json."""
        started = time.monotonic()
        save = self.config.save
        self.reporter.phase(JobPhase.exporting)
        setup = Setup.of(self.spec, self.config)
        lora_path = Path(self.spec.source_run_dir or "") / save.lora_path
        if not (lora_path / "adapter_config.json").is_file():
            raise ExportError(
                f"no LoRA adapters at {lora_path} (adapter_config.json): the source job's files were removed; "
                "train the job again"
            )
        export.preflight(self.config, setup.model_path)
        examples = export.gate_examples(self.config, setup.gguf_test_split())
        tracker = export.Tracker.planned(self.reporter.phase_progress, save.gguf_types, merging=True, scoring=examples)
        merged = export.merged_dir(self.config, self.run_dir)
        assert merged is not None  # ExportRequest asks for a merged model or GGUF files
        exports: dict[str, Any] = {}
        stats: dict[str, Any] = {"kind": "export", "model": self.config.model.name, "model_path": setup.model_path}
        try:
            tracker.stage("merge", "merging the LoRA adapters into the base model")
            export.merge_lora(setup.model_path, lora_path, merged)
            if save.merged_path:
                exports["merged"] = save.merged_path
            if save.gguf_types:
                gguf = export.export_gguf(
                    self.config,
                    self.run_dir,
                    merged,
                    examples,
                    setup.template.stop_word,
                    tracker,
                    self.reporter.check_stop,
                )
                exports["gguf"], stats["quantization"] = gguf.files, gguf.summary
        finally:
            if not save.merged_path:
                export.remove_tree(merged)
        stats.update(exports=exports, wall_seconds=round(time.monotonic() - started, 3))
        evaluation.write_json(self.run_dir / "metrics" / "export-stats.json", stats)
        return stats
