"""One job, in the spec's order: load model -> attach LoRA -> prepare data -> baseline -> train -> save ->
evaluate -> export -> gates.

An export job (kind `export`) skips to the end: it merges a finished job's adapters into the base again and
exports that, without training.

Runs in a child process of the worker, so a crash, a CUDA out-of-memory or a kill cannot take the worker
down; the process stays for the worker's next job while jobs end cleanly (`child_main`). It talks to the
worker through a pipe (progress, phases, the outcome) and watches a shared flag with which the worker asks it
to stop at the end of the current step: to cancel, or to shut down after saving a checkpoint the job resumes
from.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import files
from app.models import GateName, GateResult, GatesReport, GateStatus, JobKind, JobPhase
from app.training_config import EMBEDDED_MODEL, TrainingConfig
from worker import batch_size, chat_templates, evaluation, export, gates
from worker.batch_size import BatchPlan
from worker.chat_templates import ChatTemplate
from worker.data import DataError, prepare
from worker.evaluation import TestExample

log = logging.getLogger("forge.worker.job")


# Values of the shared stop flag.
RUN, CANCEL, SHUTDOWN = 0, 1, 2


class Stopped(Exception):
    """The worker asked this job to stop between steps."""

    def __init__(self, mode: int) -> None:
        super().__init__("cancel" if mode == CANCEL else "shutdown")
        self.mode = mode


class ModelNotFound(RuntimeError):
    code = "model_not_found"


class Diverged(RuntimeError):
    code = "diverged"


class GateFailed(RuntimeError):
    code = "gate_failed"


# The files of the baseline and evaluate steps, in the run folder.
METRICS_FILES = {"baseline": "metrics/baseline.json", "evaluate": "metrics/evaluation.json"}
SAMPLES_FILE = "metrics/samples.jsonl"
GATES_FILE = "metrics/gates.json"
BATCH_FILE = "metrics/batch-size.json"
LOSS_PLOT = "metrics/loss.png"


@dataclass
class JobSpec:
    job_id: str
    config: dict[str, Any]
    run_dir: str
    project_dir: str
    cache_dir: str
    resume_from: str | None = None
    kind: str = JobKind.training.value
    source_run_dir: str | None = None  # an export job's source: the training job's run folder


class JobRunner:
    def __init__(self, spec: JobSpec, conn: Any, stop_flag: Any) -> None:
        self.spec = spec
        self.config = TrainingConfig.model_validate(spec.config)
        self.run_dir = Path(spec.run_dir)
        self.project_dir = Path(spec.project_dir)
        self.conn = conn
        self.stop_flag = stop_flag
        # What the job knows before it ends (baseline metrics, evaluation progress), shown in its `result`.
        self.partial: dict[str, Any] = {}
        self.template: ChatTemplate = chat_templates.TEMPLATES["gemma-3"]  # set from the model when it loads

    def stop_mode(self) -> int:
        return int(self.stop_flag.value)

    # -- reporting ------------------------------------------------------------------------------------
    def report(self, message: dict[str, Any]) -> None:
        self.conn.send(message)

    def phase(self, phase: JobPhase) -> None:
        self.check_stop()
        log.info("phase: %s", phase.value)
        self.report({"type": "phase", "phase": phase.value})

    def check_stop(self) -> None:
        if self.stop_mode() != RUN:
            raise Stopped(self.stop_mode())

    def publish(self, **fields: Any) -> None:
        self.partial.update(fields)
        self.report({"type": "result", "result": dict(self.partial)})

    def phase_progress(self, fraction: float, detail: str) -> None:
        self.report({"type": "progress", "phase_progress": fraction, "phase_detail": detail})

    # -- steps ----------------------------------------------------------------------------------------
    def resolve_model(self) -> str:
        name = self.config.model.name
        if name == EMBEDDED_MODEL:
            from worker import embedded

            return str(embedded.model_dir(Path(self.spec.cache_dir)))
        path = files.expand_home(name)
        local = path if path.is_absolute() else self.project_dir / path
        if (local / "config.json").is_file():
            return str(local)
        if name.startswith(("/", ".", "~")):
            raise ModelNotFound(f"model.name {name!r}: no model folder (config.json) at {local}")
        return name  # a hub id: transformers finds it in the local cache or downloads it

    def load_test_set(self) -> list[TestExample]:
        """The test split the baseline and evaluate steps score (none when both are off)."""
        settings = self.config.evaluation
        if not (settings.baseline or settings.evaluate):
            return []
        path = (self.project_dir / settings.test_path).resolve()
        if not path.is_file():
            raise DataError(
                f"evaluation.test_path {settings.test_path!r} does not exist ({path}); run Phase 3 (split) first, "
                "or set evaluation.baseline and evaluation.evaluate to false"
            )
        glossary = evaluation.load_glossary(self.project_dir / settings.glossary_path) if settings.glossary_path else []
        examples = evaluation.load_test_set(path, settings, glossary)
        log.info("test set: %d examples from %s", len(examples), settings.test_path)
        return examples

    def score_model(self, stage: str, backend: Any, model: Any, tokenizer: Any, examples: list[TestExample]) -> dict:
        """The model on the test split: answer loss, greedy answers and their metrics, in metrics/<stage>.json."""
        settings, template = self.config.evaluation, self.template
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            self.publish(evaluation_progress={"stage": stage, "done": done, "total": total})
            self.check_stop()  # a cancel or a shutdown need not wait for the whole test split

        progress(0, len(examples))
        backend.for_inference(model)
        try:
            loss = evaluation.answer_loss(
                model,
                tokenizer,
                examples,
                template=template,
                max_length=self.config.model.max_seq_length,
                batch_size=settings.batch_size,
            )
            generate = evaluation.model_generate(
                model, tokenizer, settings, template.stop_word, self.config.training.seed
            )
            metrics, samples = evaluation.score(examples, generate, batch_size=settings.batch_size, progress=progress)
            prompts = settings.inference_prompts if stage == "evaluate" else []
            asked = [[{"role": "user", "content": prompt}] for prompt in prompts]
            answers = generate(asked) if asked else []
        finally:
            backend.for_training(model, self.config)
        report = {
            "stage": stage,
            "model": self.config.model.name + (" + LoRA (fine-tuned)" if stage == "evaluate" else " (base)"),
            "test_path": settings.test_path,
            "examples": len(examples),
            "metrics": {"test_loss": loss["test_loss"], "perplexity": loss["perplexity"], **metrics},
            "answer_tokens": loss["answer_tokens"],
            "generation": settings.model_dump(include={"max_new_tokens", "do_sample", "temperature", "top_p", "top_k"}),
            "seconds": round(time.monotonic() - started, 3),
        }
        evaluation.write_json(self.run_dir / METRICS_FILES[stage], report)
        evaluation.write_samples(self.run_dir / SAMPLES_FILE, stage, samples)
        if asked:
            rows = [{"index": i, "prompt": p, "answer": a} for i, (p, a) in enumerate(zip(asked, answers, strict=True))]
            evaluation.write_samples(self.run_dir / SAMPLES_FILE, "inference", rows)
        log.info("%s: %s", stage, json.dumps(report["metrics"]))
        return report

    def batch_plan(self, model: Any, rows: list[Any]) -> BatchPlan:
        """The configured batch, or with `auto` the largest whose training step fits, measured now (a resumed job
        keeps its first attempt's, so its checkpoint goes on with the same steps)."""
        done = self.run_dir / BATCH_FILE
        if self.spec.resume_from and done.is_file():
            plan = BatchPlan.from_dict(json.loads(done.read_text()))
            log.info("batch size: kept from the first attempt")
        else:
            plan = batch_size.plan(self.config, model, rows, self.phase_progress)
            if plan.auto:
                evaluation.write_json(done, plan.as_dict())
        self.publish(batch_size=plan.as_dict())
        return plan

    def baseline(self, backend: Any, model: Any, tokenizer: Any, examples: list[TestExample]) -> dict | None:
        """The base model on the test split, before training (LoRA's B matrices start at zero: same outputs)."""
        if not self.config.evaluation.baseline:
            return None
        done = self.run_dir / METRICS_FILES["baseline"]
        if self.spec.resume_from and done.is_file():
            report: dict[str, Any] = json.loads(done.read_text())  # a resumed job keeps its first baseline
            log.info("baseline: kept from the first attempt")
        else:
            self.phase(JobPhase.baseline)
            report = self.score_model("baseline", backend, model, tokenizer, examples)
        self.publish(baseline={"examples": report["examples"], "metrics": report["metrics"]})
        return report

    def evaluate(self, backend: Any, model: Any, tokenizer: Any, examples: list[TestExample]) -> dict | None:
        """The fine-tuned model on the same split, after training."""
        if not self.config.evaluation.evaluate:
            return None
        self.phase(JobPhase.evaluate)
        report = self.score_model("evaluate", backend, model, tokenizer, examples)
        self.publish(evaluation={"examples": report["examples"], "metrics": report["metrics"]})
        return report

    def run_gates(
        self,
        baseline: dict | None,
        evaluated: dict | None,
        log_history: list[dict],
        quantization: GateResult | None = None,
    ) -> GatesReport:
        """The spec's gates; `quantization` is the GGUF export's quantization-verified result, if it ran."""
        losses = [float(entry["loss"]) for entry in log_history if "loss" in entry]
        result = gates.run_all(self.config.gates, baseline, evaluated, losses, quantization)
        evaluation.write_json(self.run_dir / GATES_FILE, result.model_dump(mode="json"))
        for gate in result.gates:
            log.info("gate %s: %s (%s)", gate.name.value, gate.status.value, gate.message)
        self.publish(gates=result.model_dump(mode="json"))
        return result

    def run(self) -> dict[str, Any]:
        if self.spec.kind == JobKind.export:
            return self.run_export()
        from worker import backends

        started = time.monotonic()
        backend = backends.select(self.config.backend)  # before transformers: Unsloth patches it on import
        import datasets
        from transformers import PrinterCallback
        from transformers.utils import logging as hf_logging

        from worker.progress import ProgressCallback
        from worker.training_args import sft_config

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        self.report({"type": "backend", "backend": backend.name})
        log.info("backend: %s", backend.name)

        self.phase(JobPhase.loading_model)
        model_path = self.resolve_model()
        examples = self.prepare_export(model_path)  # a GGUF export that cannot work fails now, not after training
        try:
            model, tokenizer = backend.load_model(model_path, self.config)
        except OSError as exc:
            raise ModelNotFound(
                f"could not load model {self.config.model.name!r}: {exc}. Use {EMBEDDED_MODEL!r}, a local "
                "folder, or a hub id already in this worker's Hugging Face cache"
            ) from exc

        self.phase(JobPhase.attaching_lora)
        model = backend.attach_lora(model, self.config)

        self.phase(JobPhase.preparing_data)
        self.template = chat_templates.for_job(self.config, model_path)
        data = prepare(tokenizer, self.template, self.config, self.project_dir)
        dataset, eval_dataset = backend.prepare_data(data)
        log.info("data: %s", json.dumps(data.stats))
        batch = self.batch_plan(model, data.train)
        test_set = self.load_test_set()

        baseline = self.baseline(backend, model, tokenizer, test_set)

        self.phase(JobPhase.training)
        progress = ProgressCallback(self.report, self.stop_mode)
        args = sft_config(self.config, self.run_dir, batch, evaluate=eval_dataset is not None)
        from worker import reporting

        callbacks = [progress, *reporting.callbacks(self.config, self.run_dir)]  # training.report_to
        trainer = backend.make_trainer(model, tokenizer, dataset, args, callbacks, eval_dataset)
        trainer.remove_callback(PrinterCallback)  # progress goes to logs/training.log and the worker instead
        resume = str(self.run_dir / self.spec.resume_from) if self.spec.resume_from else None
        if resume:
            log.info("resuming from %s", resume)
        output = trainer.train(resume_from_checkpoint=resume)
        if progress.diverged:
            raise Diverged(progress.diverged)
        if progress.stopped_by is not None:
            raise Stopped(progress.stopped_by)
        # The trainer's history, restored from the checkpoint on a resume: the whole run's curve.
        log_history = [dict(entry) for entry in trainer.state.log_history]
        from worker.plots import write_loss_plot

        write_loss_plot(log_history, self.run_dir / LOSS_PLOT, title=f"{self.config.model.name}: training loss")

        self.phase(JobPhase.saving)
        save = self.config.save
        lora_path = self.run_dir / save.lora_path
        backend.save_lora(model, tokenizer, str(lora_path))
        self.report({"type": "checkpoint", "path": save.lora_path})
        exports: dict[str, Any] = {"lora": save.lora_path}
        merged_dir = self.merged_dir()
        if merged_dir is not None:
            backend.save_merged(model, tokenizer, str(merged_dir), model_path, str(lora_path))
            if save.merged_path:
                exports["merged"] = save.merged_path

        evaluated = self.evaluate(backend, model, tokenizer, test_set)

        metrics = output.metrics
        steps = int(trainer.state.global_step)
        seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
        runtime = float(metrics.get("train_runtime", 0.0))
        stats: dict[str, Any] = {
            "backend": backend.name,
            "model": self.config.model.name,
            "model_path": model_path,
            "steps": steps,
            "epochs": float(trainer.state.epoch or 0.0),
            "train_loss": float(metrics.get("train_loss", float("nan"))),
            "final_loss": next((e["loss"] for e in reversed(progress.log_history) if "loss" in e), None),
            "train_runtime_seconds": round(runtime, 3),
            "tokens_seen": seen,
            "tokens_per_second": round(seen / runtime, 1) if runtime > 0 and seen else None,
            "peak_gpu_memory_gib": _peak_gpu_memory_gib(),
            "data": data.stats,
            "eval_loss": next((e["eval_loss"] for e in reversed(progress.log_history) if "eval_loss" in e), None),
        }
        # The export loads models of its own: give back what training held.
        del model, trainer, dataset, eval_dataset
        _free_memory()

        quantization: GateResult | None = None
        if save.gguf_types and merged_dir is not None:
            self.phase(JobPhase.exporting)
            tracker = export.Tracker.planned(self.phase_progress, save.gguf_types, merging=False, scoring=examples)
            try:
                exports["gguf"], stats["quantization"] = self.export_gguf(merged_dir, examples, tracker)
            finally:
                if not save.merged_path:
                    export.remove_tree(merged_dir)
            quantization = _quantization_gate(stats["quantization"])

        stats.update(exports=exports, wall_seconds=round(time.monotonic() - started, 3))
        stats["log_history"] = progress.log_history
        gate_report = self.run_gates(baseline, evaluated, log_history, quantization)
        stats.update(self.partial)
        evaluation.write_json(self.run_dir / "metrics" / "training-stats.json", stats)
        failed = [g for g in gate_report.gates if g.status == GateStatus.failed]
        if failed and gate_report.required:
            self.publish(**{k: v for k, v in stats.items() if k != "log_history"})
            raise GateFailed(
                "training finished but gates.required is true and "
                + "; ".join(f"{g.name.value} failed: {g.message}" for g in failed)
            )
        return stats

    def run_export(self) -> dict[str, Any]:
        """An export job: the source job's LoRA adapters merged into the base model again, then exported."""
        started = time.monotonic()
        save = self.config.save
        self.phase(JobPhase.exporting)
        model_path = self.resolve_model()
        lora_path = Path(self.spec.source_run_dir or "") / save.lora_path
        if not (lora_path / "adapter_config.json").is_file():
            raise export.ExportError(
                f"no LoRA adapters at {lora_path} (adapter_config.json): the source job's files were removed; "
                "train the job again"
            )
        examples = self.prepare_export(model_path)
        tracker = export.Tracker.planned(self.phase_progress, save.gguf_types, merging=True, scoring=examples)
        merged_dir = self.merged_dir()
        assert merged_dir is not None  # ExportRequest asks for a merged model or GGUF files
        exports: dict[str, Any] = {}
        stats: dict[str, Any] = {"kind": "export", "model": self.config.model.name, "model_path": model_path}
        try:
            tracker.stage("merge", "merging the LoRA adapters into the base model")
            export.merge_lora(model_path, lora_path, merged_dir)
            if save.merged_path:
                exports["merged"] = save.merged_path
            if save.gguf_types:
                exports["gguf"], stats["quantization"] = self.export_gguf(merged_dir, examples, tracker)
        finally:
            if not save.merged_path:
                export.remove_tree(merged_dir)
        stats.update(exports=exports, wall_seconds=round(time.monotonic() - started, 3))
        export.write_json(self.run_dir / "metrics" / "export-stats.json", stats)
        return stats

    # -- export ---------------------------------------------------------------------------------------
    def merged_dir(self) -> Path | None:
        """Where the merged model goes: save.merged_path, or a scratch folder when only GGUF files are wanted."""
        save = self.config.save
        if save.merged_path:
            return self.run_dir / save.merged_path
        return self.run_dir / f"models/merged{export.PARTIAL}" if save.gguf_types else None

    def prepare_export(self, model_path: str) -> list[export.Example]:
        """Check, before any work, that the GGUF export can run here; the test split its gate is scored on."""
        if not self.config.save.gguf_types:
            return []
        architecture = export.check_tools(model_path, self.config.model.name)
        log.info("GGUF export: %s to %s", architecture, ", ".join(self.config.save.gguf_types))
        test_split = self.project_dir / self.config.evaluation.test_path  # the split the evaluate step scores
        if not test_split.is_file():
            log.warning("no test split at %s: the GGUF files are checked but their quality is not scored", test_split)
            return []
        return export.test_examples(test_split)

    def export_gguf(
        self, merged_dir: Path, examples: list[export.Example], tracker: export.Tracker
    ) -> tuple[list[str], dict[str, Any]]:
        """export -> verify -> gate: GGUF files of the merged model, each loaded by llama.cpp and scored against it
        on the test split (metrics/quantization.json). Returns the files and the gate's summary."""
        save = self.config.save
        assert save.gguf_path is not None
        files = export.write_ggufs(merged_dir, self.run_dir / save.gguf_path, save.gguf_types, tracker, self.check_stop)
        reference, reference_sample = self.reference_score(merged_dir, examples, tracker)
        checked = export.verify_ggufs(
            files,
            examples,
            export.chrf,
            tracker,
            n_ctx=self.config.model.max_seq_length + export.EVAL_MAX_NEW_TOKENS,
            check_stop=self.check_stop,
        )
        max_drop = self.config.gates.quantization_max_drop
        gate = export.quantization_gate(reference, checked, max_drop, save.max_gguf_bytes)
        for item in gate["files"]:
            item["path"] = (Path(save.gguf_path) / item.pop("file")).as_posix()
        test_split = Path(self.config.evaluation.test_path)
        report = {
            **gate,
            "metric": "chrf",
            "test_split": test_split.as_posix() if examples else None,
            "examples": len(examples),
            "max_new_tokens": export.EVAL_MAX_NEW_TOKENS,
            "reference": {"model": "merged", "score": reference, "sample": reference_sample},
        }
        export.write_json(self.run_dir / "metrics" / "quantization.json", report)
        log.info("%s: %s (%s)", export.GATE, gate["status"], json.dumps(_gate_summary(gate)))
        return [item["path"] for item in gate["files"]], _gate_summary(gate)

    def reference_score(
        self, merged_dir: Path, examples: list[export.Example], tracker: export.Tracker
    ) -> tuple[float | None, dict[str, Any] | None]:
        """The merged model's chrF on the test split: what the GGUF files are held to."""
        if not examples:
            return None, None
        step = tracker.stage("reference", f"answering {len(examples)} test prompts with the merged model")
        prompts = [e.prompt for e in examples]
        answers = export.merged_predictions(merged_dir, prompts, export.EVAL_MAX_NEW_TOKENS, step, self.check_stop)
        score = export.chrf(answers, [e.reference for e in examples])
        return score, {"prompt": prompts[0], "answer": answers[0], "expected": examples[0].reference}


def _gate_summary(gate: dict[str, Any]) -> dict[str, Any]:
    """What the job's result shows of the gate; metrics/quantization.json has the rest."""
    keep = ("quantization", "path", "bytes", "score", "relative_drop", "passed", "reasons")
    return {
        "gate": gate["gate"],
        "status": gate["status"],
        "reference_score": gate["reference_score"],
        "max_drop": gate["max_drop"],
        "files": [{k: item.get(k) for k in keep} for item in gate["files"]],
    }


def _quantization_gate(summary: dict[str, Any]) -> GateResult:
    """The export's verdict (metrics/quantization.json) as the `quantization-verified` gate of metrics/gates.json."""
    parts = [
        f"{f['quantization']}: chrF {f['score']}, drop {f['relative_drop']}"
        + (f" ({'; '.join(f['reasons'])})" if f.get("reasons") else "")
        for f in summary["files"]
    ]
    reference = summary["reference_score"]
    message = (
        f"each GGUF against the merged model (chrF {reference}) on the test split, at most "
        f"{summary['max_drop']:.0%} lower: " + "; ".join(parts)
        if reference is not None
        else "no test split to score the GGUF files on; " + "; ".join(parts)
    )
    return GateResult(
        name=GateName.quantization_verified, status=GateStatus(summary["status"]), message=message, details=summary
    )


def _free_memory() -> None:
    """Give back what a finished step or job held (model, optimizer state, cached CUDA blocks)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak_gpu_memory_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _setup_logging(run_dir: Path) -> logging.Handler:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "training.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _classify(exc: BaseException) -> tuple[str, str]:
    """A code and a message a user can act on."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code, str(exc)
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "out_of_memory", (
            f"the GPU ran out of memory ({exc}). Reduce training.per_device_train_batch_size and raise "
            'training.gradient_accumulation_steps (or set the batch to "auto" to have it measured), or lower '
            "model.max_seq_length"
        )
    return "training_failed", f"{name}: {exc}"


def child_main(conn: Any, stop_flag: Any) -> None:
    """Entry point of the training child process: the jobs the worker sends, one at a time.

    The process outlives a job: the next one on the same backend skips importing Unsloth and, with the
    compiled kernels still in memory, most of the compiling. After a job that did not end cleanly (a failure,
    a shutdown) it exits, so that a broken CUDA context or a half-patched library never meets the next job.
    """
    # Ctrl-C in a terminal reaches the whole process group; the worker decides when a job stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    jobs_run = 0
    while True:
        try:
            spec = conn.recv()
        except EOFError:  # the worker closed the pipe: it retires this process
            return
        # Compiled kernels (Unsloth compiles every decoder layer) kept with the worker's other caches, which a
        # container keeps on a volume: a new process on this machine skips most of the minutes of compiling.
        compile_cache = Path(spec.cache_dir) / "compile"
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(compile_cache / "triton"))
        reusable = run_one(spec, conn, stop_flag, warm=jobs_run > 0)
        jobs_run += 1
        if not reusable:
            conn.close()
            return


def run_one(spec: JobSpec, conn: Any, stop_flag: Any, warm: bool) -> bool:
    """Run one job and send its outcome; True when this process is fit for another job."""
    run_dir = Path(spec.run_dir)
    handler = _setup_logging(run_dir)
    runner = JobRunner(spec, conn, stop_flag)
    reusable = False
    try:
        stats = runner.run()
        stats["warm_start"] = warm
    except Stopped as stop:
        if stop.mode == SHUTDOWN:
            from app.checkpoints import in_run

            checkpoint = in_run(run_dir, runner.config.training.output_dir) or spec.resume_from
            log.info("stopped for a worker shutdown; resumes from %s", checkpoint or "the start")
            conn.send({"type": "interrupted", "checkpoint": checkpoint})
        else:
            log.info("cancelled at the worker's request")
            conn.send({"type": "stopped"})
            reusable = True
    except BaseException as exc:
        log.error("job failed:\n%s", traceback.format_exc())
        code, message = _classify(exc)
        conn.send({"type": "failed", "code": code, "message": message})
    else:
        log.info("done: %s", json.dumps({k: stats.get(k) for k in ("kind", "steps", "final_loss", "exports")}))
        conn.send({"type": "succeeded", "result": {k: v for k, v in stats.items() if k != "log_history"}})
        reusable = True
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        del runner
        _free_memory()
    return reusable
