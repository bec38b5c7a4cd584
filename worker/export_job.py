"""An export job (kind `export`): a finished training job's LoRA adapters merged into the base model again and
exported in other formats, without training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.files import write_json
from app.models import JobPhase
from app.run_folder import RunFolder
from worker import export, release
from worker.gguf import ExportError
from worker.protocol import JobSpec
from worker.reporter import Reporter
from worker.setup import Setup


class ExportJob:
    def __init__(self, spec: JobSpec, reporter: Reporter) -> None:
        self.spec = spec
        self.reporter = reporter

    def run(self) -> dict[str, Any]:
        """merge -> export -> verify -> gate -> release.json; the stats of metrics/export-stats.json."""
        started = time.monotonic()
        self.reporter.phase(JobPhase.exporting)
        setup = Setup.of(self.spec)
        config, run, save = setup.config, setup.run, setup.config.save
        source = RunFolder(Path(self.spec.source_run_dir or ""), config)  # the training job's: adapters, answers
        lora_path = source.lora
        if not (lora_path / "adapter_config.json").is_file():
            raise ExportError(
                f"no LoRA adapters at {lora_path} (adapter_config.json): the source job's files were removed; "
                "train the job again"
            )
        export.preflight(config, setup.model_path)
        examples = export.gate_examples(config, setup.test_split())
        tracker = export.Tracker.planned(self.reporter.phase_progress, save.gguf_types, merging=True, scoring=examples)
        merged = run.merged_or_scratch
        assert merged is not None  # ExportRequest asks for a merged model or GGUF files
        exports: dict[str, Any] = {}
        stats: dict[str, Any] = {"kind": "export", "model": config.model.name, "model_path": setup.model_path}
        try:
            tracker.stage("merge", "merging the LoRA adapters into the base model")
            export.merge_lora(setup.model_path, lora_path, merged)
            if save.merged_path:
                exports["merged"] = save.merged_path
            if save.gguf_types:
                template, check_stop = setup.template, self.reporter.check_stop
                gguf = export.export_gguf(config, run, merged, examples, template, tracker, check_stop, source)
                exports["gguf"], stats["quantization"] = gguf.files, gguf.summary
        finally:
            if not save.merged_path:
                export.remove_tree(merged)
        stats.update(exports=exports, wall_seconds=round(time.monotonic() - started, 3))
        write_json(run.export_stats, stats)
        release.write(self.spec, run)
        return stats
