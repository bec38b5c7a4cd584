"""A training job, in the spec's order: load model -> attach LoRA -> prepare data -> baseline -> train -> save ->
evaluate -> export -> gates. `LoraRecipe.run` names the steps; each step is a method with typed inputs and
outputs, and the job's result is a typed model (metrics/training-stats.json).

Runs in the training child process (worker/child.py), which sends what the steps report to the worker.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.datasets.templates import ChatTemplate
from app.files import write_json
from app.models import GateResult, GatesReport, GateStatus, JobPhase
from app.run_folder import RunFolder, Stage
from app.training_config import EMBEDDED_MODEL, TrainingConfig
from worker import baselines, batch_size, comparison, devices, evaluation, export, gates, ranks, release, warm_model
from worker.backends import Backend
from worker.batch_size import BatchPlan
from worker.checkpoints import CheckpointSelector, selection, validation_examples
from worker.data import prepare
from worker.evaluation import StageScore, TestExample
from worker.export import GgufExport
from worker.gguf.early import EarlyGguf, abandoned_on_error
from worker.protocol import BackendChosen, CheckpointSaved, JobSpec, StopRequested
from worker.reporter import Reporter
from worker.result import JobResult, Trained
from worker.setup import Setup

log = logging.getLogger("forge.worker.job")


class ModelNotFound(RuntimeError):
    code = "model_not_found"


class Diverged(RuntimeError):
    code = "diverged"


class GateFailed(RuntimeError):
    code = "gate_failed"


@dataclass
class Data:
    """The prepare-data step's output: datasets in the backend's form, the batch, the test examples."""

    train: Any
    eval: Any | None
    stats: dict[str, Any]
    batch: BatchPlan
    template: ChatTemplate
    test_set: list[TestExample]  # what the baseline and evaluate steps score
    gguf_examples: list[TestExample]  # what the GGUF files are scored on
    validation: list[TestExample]  # what select_checkpoint best answers (an answer metric's; worker/checkpoints.py)


@dataclass
class Saved:
    exports: dict[str, Any]  # artifact kind -> path(s) relative to the run folder
    merged: Path | None  # the merged model's folder, a scratch one when only GGUF files are wanted


class LoraRecipe:
    def __init__(self, spec: JobSpec, reporter: Reporter) -> None:
        self.spec = spec
        self.config = TrainingConfig.model_validate(spec.config)
        self.folder = RunFolder(Path(spec.run_dir), self.config)
        self.reporter = reporter
        self.warm_key: str | None = None  # what the loaded model depends on (None: it is not kept after the job)
        self.kept: warm_model.Kept | None = None  # the model kept loaded from an earlier job, when this one fits it

    @property
    def kept_from(self) -> str | None:
        return self.kept.job_id if self.kept else None

    def run(self) -> JobResult:
        """The spec's steps, in order."""
        started = time.monotonic()
        devices.reset_peak_memory()
        setup, backend, model, tokenizer = self.load_model(self.choose_backend())
        model = self.attach_lora(backend, model)
        data = self.prepare_data(backend, model, tokenizer, setup)
        baseline = self.baseline(backend, model, tokenizer, data, setup)
        trained = self.train(backend, model, tokenizer, data)
        if not ranks.leader():  # the other DDP ranks only train; rank 0 saves, evaluates and exports
            return JobResult.of(backend.name, setup, data.stats, trained, self.kept_from)
        saved = self.save(backend, model, tokenizer, setup)
        early = EarlyGguf.begin(self.config.save, saved.merged, self.folder.gguf_dir, model, self.reporter.check_stop)
        evaluated = self.evaluate(backend, model, tokenizer, data, early)
        result = JobResult.of(backend.name, setup, data.stats, trained, self.kept_from)
        warm_model.keep(self.warm_key, backend, model, tokenizer, self.kept_from or self.spec.job_id)
        del model, tokenizer  # the export loads models of its own: give back what training held, unless kept
        devices.free_memory()
        gguf = self.export(setup, saved, data.gguf_examples, early)
        report = self.gates(baseline, evaluated, trained.history, gguf.gate if gguf else None)
        return self.finish(result, saved, gguf, report, started)

    # -- the steps ------------------------------------------------------------------------------------
    def choose_backend(self) -> Backend:
        from worker import backends

        backend = backends.select(self.config.backend)  # before transformers: Unsloth patches it on import
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        self.reporter.send(BackendChosen(backend.name))
        log.info("backend: %s", backend.name)
        return backend

    def load_model(self, backend: Backend) -> tuple[Setup, Backend, Any, Any]:
        """The config resolved once, and the base model with its tokenizer (kept loaded, when it fits: warm_model)."""
        self.reporter.phase(JobPhase.loading_model)
        setup = Setup.of(self.spec)
        export.preflight(self.config, setup.model_path)  # a GGUF export that cannot work fails now, not later
        self.warm_key = warm_model.key(self.config, backend.name, setup.model_path, setup.template.name)
        self.kept = warm_model.take(self.warm_key)
        if self.kept is not None:
            log.info("model: kept loaded from job %s; not loading it again", self.kept.job_id)
            return setup, self.kept.backend, self.kept.model, self.kept.tokenizer
        try:
            return setup, backend, *backend.load_model(setup.model_path, self.config, setup.template)
        except OSError as exc:
            raise ModelNotFound(
                f"could not load model {self.config.model.name!r}: {exc}. Use {EMBEDDED_MODEL!r}, a local "
                "folder, or a hub id already in this worker's Hugging Face cache"
            ) from exc

    def attach_lora(self, backend: Backend, model: Any) -> Any:
        """Adapters drawn from the job's seed: a kept model (wrapped already) gets fresh ones."""
        self.reporter.phase(JobPhase.attaching_lora)
        if self.kept is None:
            model = backend.attach_lora(model, self.config)
        warm_model.fresh_adapters(model, self.config.training.seed)
        return model

    def prepare_data(self, backend: Backend, model: Any, tokenizer: Any, setup: Setup) -> Data:
        self.reporter.phase(JobPhase.preparing_data)
        prepared = prepare(tokenizer, setup.template, self.config, setup.resolved.data_files())
        train, eval_ = backend.prepare_data(prepared)
        log.info("data: %s", json.dumps(prepared.stats))
        batch = self.batch_plan(model, prepared.train)
        split = setup.test_split()
        test_set = evaluation.scored_examples(split, self.config.evaluation) if split else []
        gguf_examples = export.gate_examples(self.config, split)
        validation = validation_examples(self.config, setup.resolved.val)
        return Data(train, eval_, prepared.stats, batch, setup.template, test_set, gguf_examples, validation)

    def baseline(self, backend: Backend, model: Any, tokenizer: Any, data: Data, setup: Setup) -> dict | None:
        """The base model on the test split, before training (LoRA's B matrices start at zero: same outputs),
        or a kept baseline of the same model, split and generation settings (worker/baselines.py)."""
        if not self.config.evaluation.baseline or not ranks.leader():  # rank 0 alone, the others wait in train
            return None
        done = self.folder.metrics("baseline")
        if self.spec.resume_from and done.is_file():
            report: dict[str, Any] = json.loads(done.read_text())  # a resumed job keeps its first baseline
            log.info("baseline: kept from the first attempt")
        else:
            self.reporter.phase(JobPhase.baseline)
            project, examples = Path(self.spec.project_dir), len(data.test_set)
            asked = (self.config, backend.name, setup.model_path, setup.template.name, data.test_set)
            digest = baselines.key(*asked, baselines.device_of(model))
            reused = baselines.reuse(project, digest, self.folder) if self.config.evaluation.reuse_baseline else None
            if reused is not None:
                report = reused
                self.reporter.publish(evaluation_progress={"stage": "baseline", "done": examples, "total": examples})
            else:
                scored = self.score_model("baseline", backend, model, tokenizer, data)
                baselines.keep(project, digest, self.spec.job_id, scored.report, scored.samples)
                report = scored.report
        self.reporter.publish(baseline={"examples": report["examples"], "metrics": report["metrics"]})
        return report

    def train(self, backend: Backend, model: Any, tokenizer: Any, data: Data) -> Trained:
        self.reporter.phase(JobPhase.training)
        from transformers import PrinterCallback

        from worker import reporting
        from worker.plots import write_loss_plot
        from worker.progress import ProgressCallback
        from worker.training_args import sft_config

        progress = ProgressCallback(self.reporter.send, self.reporter.step_stop_mode)
        args = sft_config(self.config, self.folder.output_dir, data.batch, evaluate=data.eval is not None)
        report_to = reporting.callbacks(self.config, self.folder, self.spec.job_id, Path(self.spec.project_dir))
        selector = self.checkpoint_selector(backend, tokenizer, data)
        callbacks = [progress, *([selector] if selector else []), *report_to]
        trainer = backend.make_trainer(model, tokenizer, data.train, args, callbacks, data.eval)
        trainer.remove_callback(PrinterCallback)  # progress goes to logs/training.log and the worker instead
        resume = str(self.folder.root / self.spec.resume_from) if self.spec.resume_from else None
        if resume:
            log.info("resuming from %s", resume)
        output = trainer.train(resume_from_checkpoint=resume)
        if progress.diverged:
            raise Diverged(progress.diverged)
        if progress.stopped_by is not None:
            raise StopRequested(progress.stopped_by)
        history = [dict(entry) for entry in trainer.state.log_history]
        if ranks.leader():
            write_loss_plot(history, self.folder.loss_plot, title=f"{self.config.model.name}: training loss")
        state, seen = trainer.state, int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
        picked = selector.pick(model, int(state.global_step)) if selector and ranks.leader() else None
        return Trained(
            output.metrics,
            int(state.global_step),
            float(state.epoch or 0.0),
            seen,
            history,
            progress.log_history,
            progress.last_tokens_per_second,
            picked,
        )

    def save(self, backend: Backend, model: Any, tokenizer: Any, setup: Setup) -> Saved:
        self.reporter.phase(JobPhase.saving)
        save = self.config.save
        lora_path = self.folder.lora
        backend.save_lora(model, tokenizer, str(lora_path))
        self.reporter.send(CheckpointSaved(path=save.lora_path))
        saved = Saved({"lora": save.lora_path}, self.folder.merged_or_scratch)
        if saved.merged is not None:
            backend.save_merged(model, tokenizer, str(saved.merged), setup.model_path, str(lora_path))
            if save.merged_path:
                saved.exports["merged"] = save.merged_path
        return saved

    def evaluate(
        self, backend: Backend, model: Any, tokenizer: Any, data: Data, early: EarlyGguf | None
    ) -> dict | None:
        """The fine-tuned model on the same split, after training (and beside it, on a GPU, the GGUF files)."""
        if not self.config.evaluation.evaluate:
            return None
        with abandoned_on_error(early):
            self.reporter.phase(JobPhase.evaluate)
            report = self.score_model("evaluate", backend, model, tokenizer, data).report
        self.reporter.publish(evaluation={"examples": report["examples"], "metrics": report["metrics"]})
        return report

    def export(
        self, setup: Setup, saved: Saved, examples: list[TestExample], early: EarlyGguf | None
    ) -> GgufExport | None:
        """GGUF files of the merged model (`early`: begun already), verified in llama.cpp; None when the job asks
        for none."""
        save = self.config.save
        if not save.gguf_types or saved.merged is None:
            return None
        try:
            with abandoned_on_error(early):  # before the merged model goes
                self.reporter.phase(JobPhase.exporting)
                begun = early is not None
                tracker = export.Tracker.planned(
                    self.reporter.phase_progress, save.gguf_types, merging=False, scoring=examples, begun=begun
                )
                template, check_stop = setup.template, self.reporter.check_stop
                return export.export_gguf(
                    self.config, self.folder, saved.merged, examples, template, tracker, check_stop, early=early
                )
        finally:
            if not save.merged_path:
                export.remove_tree(saved.merged)

    def gates(
        self, baseline: dict | None, evaluated: dict | None, history: list[dict], quantization: GateResult | None
    ) -> GatesReport:
        """The spec's gates; `quantization` is the GGUF export's quantization-verified result, if it ran."""
        losses = [float(entry["loss"]) for entry in history if "loss" in entry]
        regression = comparison.run(self.config.gates, self.folder, self.spec.accepted_job_id)
        result = gates.run_all(self.config.gates, baseline, evaluated, losses, quantization, regression)
        write_json(self.folder.gates, result.model_dump(mode="json"))
        for gate in result.gates:
            log.info("gate %s: %s (%s)", gate.name.value, gate.status.value, gate.message)
        self.reporter.publish(gates=result.model_dump(mode="json"))
        return result

    # -- helpers of the steps -------------------------------------------------------------------------
    def batch_plan(self, model: Any, rows: list[Any]) -> BatchPlan:
        """The configured batch, or with `auto` the largest whose training step fits, measured now (a resumed job
        keeps its first attempt's, so its checkpoint goes on with the same steps)."""
        done = self.folder.batch_size
        if self.spec.resume_from and done.is_file():
            plan = BatchPlan.from_dict(json.loads(done.read_text()))
            log.info("batch size: kept from the first attempt")
        else:
            plan = batch_size.plan(self.config, model, rows, self.reporter.phase_progress)
            if plan.auto and ranks.leader():
                write_json(done, plan.as_dict())
        self.reporter.publish(batch_size=plan.as_dict())
        return plan

    def checkpoint_selector(self, backend: Backend, tokenizer: Any, data: Data) -> CheckpointSelector | None:
        """training.select_checkpoint best (with a validation split): the trainer's callback that keeps the best."""
        if data.eval is None or selection(self.config, True) == "last":
            return None
        send, resumed = self.reporter.send, bool(self.spec.resume_from)
        return CheckpointSelector(
            self.config, self.folder, backend, tokenizer, data.validation, data.template, send, resumed
        )

    def score_model(self, stage: Stage, backend: Backend, model: Any, tokenizer: Any, data: Data) -> StageScore:
        """The model on the test split (metrics/<stage>.json, its answers in samples.jsonl)."""

        def progress(done: int, total: int) -> None:
            self.reporter.publish(evaluation_progress={"stage": stage, "done": done, "total": total})
            self.reporter.check_stop()  # a cancel or a shutdown need not wait for the whole test split

        progress(0, len(data.test_set))
        backend.for_inference(model)
        try:
            scored = evaluation.score_stage(
                stage, model, tokenizer, data.test_set, data.template, self.config, progress
            )
        finally:
            backend.for_training(model, self.config)
        write_json(self.folder.metrics(stage), scored.report)
        evaluation.write_samples(self.folder.samples, stage, scored.samples)
        if scored.inference:
            evaluation.write_samples(self.folder.samples, "inference", scored.inference)
        log.info("%s: %s", stage, json.dumps(scored.report["metrics"]))
        return scored

    def finish(
        self, result: JobResult, saved: Saved, gguf: GgufExport | None, report: GatesReport, started: float
    ) -> JobResult:
        """The result and, for a job that succeeds, its release record written; a failed required gate fails the job."""
        update: dict[str, Any] = {}
        if gguf is not None:
            saved.exports["gguf"], update["quantization"] = gguf.files, gguf.summary
        phases = self.reporter.phase_seconds(self.spec.claimed_at)
        update.update(exports=saved.exports, wall_seconds=round(time.monotonic() - started, 3), phase_seconds=phases)
        result = result.model_copy(update={**update, **self.reporter.partial})
        stats = result.as_stats()
        write_json(self.folder.training_stats, stats)
        failed = [g for g in report.gates if g.status == GateStatus.failed]
        if failed and report.required:
            self.reporter.publish(**{k: v for k, v in stats.items() if k != "log_history"})
            raise GateFailed(
                "training finished but gates.required is true and "
                + "; ".join(f"{g.name.value} failed: {g.message}" for g in failed)
            )
        release.write(self.spec, self.folder)  # last: it hashes every artifact above
        return result
