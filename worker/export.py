"""The spec's export step: the LoRA adapters merged into a 16-bit base, then GGUF files written, verified in
llama.cpp against the fine-tuned model (the evaluate step's answers when the job has them, else the merged
model's), and gated (`quantization-verified`). The stages are in worker/gguf/;
this module runs them in order, with one progress line over them all."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.datasets.templates import ChatTemplate
from app.files import write_json
from app.models import GateResult
from app.run_folder import RunFolder
from app.training_config import TrainingConfig
from worker import devices, evaluation, generation
from worker.evaluation import Conversation, TestExample
from worker.gguf import (
    CONVERTER_TYPES,
    EVAL_MAX_EXAMPLES,
    EVAL_MAX_NEW_TOKENS,
    K_QUANTS,
    StepProgress,
    StopCheck,
    never_stop,
)
from worker.gguf.convert import check_tools, write_ggufs
from worker.gguf.early import EarlyGguf
from worker.gguf.modelfile import END_OF_TURN, write_modelfile
from worker.gguf.verify import chrf, judge_files, quantization_gate, verify_ggufs

log = logging.getLogger("forge.worker.export")

REFERENCE_BATCH = 8  # prompts the merged model answers at once

Progress = Callable[[float, str], None]
"""Called with the fraction of the whole export done (0-1) and what is happening now."""


@dataclass
class Tracker:
    """Progress over the stages of one export, weighted by their usual share of its time."""

    report: Progress
    total: float
    done: float = 0.0
    current: float = 0.0
    detail: str = ""
    last_sent: float = field(default=0.0, repr=False)
    last_message: tuple[float, str] | None = field(default=None, repr=False)

    WEIGHTS = {"merge": 2.0, "convert": 4.0, "quantize": 1.0, "reference": 3.0, "verify": 2.0}

    @classmethod
    def planned(
        cls, report: Progress, types: Sequence[str], *, merging: bool, scoring: Sequence[Any], begun: bool = False
    ) -> Tracker:
        """`scoring`: the test examples the merged model answers first (none: no reference to compute); `begun`:
        the files are being written already (EarlyGguf), one stage to wait for them."""
        w = cls.WEIGHTS
        conversions = {t for t in types if t in CONVERTER_TYPES} | ({"f16"} if set(types) & set(K_QUANTS) else set())
        writing = w["convert"] * len(conversions) + w["quantize"] * len(set(types) & set(K_QUANTS))
        total = (
            w["merge"] * merging
            + (w["convert"] if begun else writing)
            + (w["reference"] if len(scoring) else 0.0)
            + w["verify"] * len(types)
        )
        return cls(report=report, total=max(total, 1.0))

    def stage(self, kind: str, detail: str) -> StepProgress:
        self.done += self.current
        self.current = self.WEIGHTS[kind]
        self.detail = detail
        log.info("export: %s", detail)
        self._send(0.0, force=True)
        return self._send

    def _send(self, fraction: float, force: bool = False) -> None:
        now = time.monotonic()
        message = (round(min((self.done + self.current * fraction) / self.total, 1.0), 4), self.detail)
        if not force and (message == self.last_message or (fraction < 1.0 and now - self.last_sent < 0.5)):
            return  # a stage's end is always sent: a quick stage must not stop its line short of it
        self.last_sent, self.last_message = now, message
        self.report(message[0], f"{self.detail} ({fraction:.0%})" if fraction else self.detail)


@dataclass
class GgufExport:
    """The GGUF files written (paths relative to the run folder) and their `quantization-verified` gate."""

    files: list[str]
    gate: GateResult

    @property
    def summary(self) -> dict[str, Any]:
        """What the job's result shows of the gate (`quantization`); metrics/quantization.json has the rest."""
        return self.gate.details


def merge_lora(base_path: str, lora_path: Path, out_dir: Path, tokenizer: Any = None) -> None:
    """LoRA adapters merged into a fresh 16-bit copy of the base (merging into 4-bit weights would round them),
    saved with the tokenizer and chat template, loadable by transformers alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=devices.compute_dtype(cpu=torch.bfloat16))
    merged = PeftModel.from_pretrained(base, str(lora_path)).merge_and_unload()
    merged.save_pretrained(out_dir)
    (tokenizer or AutoTokenizer.from_pretrained(lora_path)).save_pretrained(out_dir)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def preflight(config: TrainingConfig, model_path: str) -> None:
    """Fail in seconds, before any work, when the GGUF export this job asks for cannot run here."""
    if config.save.gguf_types:
        architecture = check_tools(model_path, config.model.name)
        log.info("GGUF export: %s to %s", architecture, ", ".join(config.save.gguf_types))


def gate_examples(config: TrainingConfig, test_split: list[TestExample] | None) -> list[TestExample]:
    """The test examples the GGUF files are scored on (None: there is no test split)."""
    if not config.save.gguf_types:
        return []
    if test_split is None:
        log.warning(
            "no test split at %s: the GGUF files are checked but their quality is not scored",
            config.evaluation.test_path,
        )
        return []
    return test_split[:EVAL_MAX_EXAMPLES]


def merged_predictions(
    merged: Path,
    prompts: Sequence[Conversation],
    stop_word: str,
    progress: StepProgress,
    check_stop: StopCheck = never_stop,
) -> tuple[list[str], list[bool]]:
    """Greedy answers of the merged model (transformers) to the test prompts, and whether each ended its turn
    within the token budget: the reference each GGUF is held to when the evaluate step did not answer them (an
    export job, sampled evaluation, evaluation off)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model: Any = AutoModelForCausalLM.from_pretrained(merged, dtype=devices.compute_dtype())
    model.to(device).eval()
    # Stop where llama.cpp stops: at the end of the model's turn as well as at <eos>.
    stops = generation.stop_ids(tokenizer, stop_word)
    rows = generation.batch_rows(len(prompts), REFERENCE_BATCH)
    generate = generation.Generator(model, tokenizer, max_new_tokens=EVAL_MAX_NEW_TOKENS, stop_ids=stops, rows=rows)

    def answered(done: int, total: int) -> None:
        progress(done / total)
        check_stop()  # between batches: a cancel waits for one batch at most

    try:
        check_stop()
        return generation.answer_all(prompts, generate, rows, progress=answered), generate.ended
    finally:
        del model, generate
        devices.free_memory()


@dataclass
class Reference:
    """What each GGUF is held to: the fine-tuned model's greedy answers to the test prompts and whether each ended
    its turn within `max_new_tokens`; `model` says which model answered (the evaluate step's, or the merged one)."""

    examples: Sequence[TestExample]
    answers: list[str]
    ended: list[bool]
    max_new_tokens: int
    model: str

    def report(self) -> tuple[float, dict[str, Any]]:
        score = chrf(self.answers, [e.reference for e in self.examples])
        first = {"prompt": self.examples[0].prompt, "answer": self.answers[0], "expected": self.examples[0].reference}
        return score, {"sample": first, "ended_turn": self.ended, "ended_turns": sum(self.ended)}


def evaluated_reference(config: TrainingConfig, run: RunFolder, examples: Sequence[TestExample]) -> Reference | None:
    """The evaluate step's greedy answers to the first test prompts (metrics/samples.jsonl), when it wrote them:
    the same model, prompts and decoding the GGUF check needs, so the merged model need not answer them again."""
    if config.evaluation.do_sample or not config.evaluation.evaluate:
        return None
    rows = {r["index"]: r for r in evaluation.read_samples(run.samples, "evaluate")}
    count = 0  # the leading test prompts the evaluate step answered, as the GGUF check asks them
    while count < len(examples) and rows.get(count, {}).get("prompt") == examples[count].prompt:
        if "ended_turn" not in rows[count]:
            break
        count += 1
    if not count:
        return None
    answered = [rows[i] for i in range(count)]
    return Reference(
        examples[:count],
        [r["answer"] for r in answered],
        [bool(r["ended_turn"]) for r in answered],
        config.evaluation.max_new_tokens,
        "fine-tuned (the evaluate step's answers)",
    )


def reference_answers(
    config: TrainingConfig,
    answered: RunFolder,
    merged: Path,
    examples: Sequence[TestExample],
    stop_word: str,
    tracker: Tracker,
    check_stop: StopCheck,
) -> Reference | None:
    """The evaluate step's answers when the job that trained the model (`answered`) has them, else the merged
    model's (None: no test split)."""
    if not examples:
        return None
    reused = evaluated_reference(config, answered, examples)
    if reused is not None:
        tracker.stage("reference", f"holding the GGUF files to the evaluate step's {len(reused.answers)} answers")
        return reused
    step = tracker.stage("reference", f"answering {len(examples)} test prompts with the merged model")
    prompts = [e.prompt for e in examples]
    answers, ended = merged_predictions(merged, prompts, stop_word, step, check_stop)
    return Reference(examples, answers, ended, EVAL_MAX_NEW_TOKENS, "merged")


def write_modelfiles(
    run: RunFolder, files: dict[str, Path], template: ChatTemplate, merged: Path, num_ctx: int
) -> None:
    """An Ollama Modelfile beside each GGUF, stopping at the template's end of turn and the tokenizer's EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    eos_token = getattr(tokenizer, "tokenizer", tokenizer).eos_token  # a multimodal processor's text tokenizer
    for path in files.values():
        write_modelfile(run.modelfile(path), template, path, eos_token=eos_token, num_ctx=num_ctx)


def export_gguf(
    config: TrainingConfig,
    run: RunFolder,
    merged: Path,
    examples: Sequence[TestExample],
    template: ChatTemplate,
    tracker: Tracker,
    check_stop: StopCheck,
    answered: RunFolder | None = None,
    early: EarlyGguf | None = None,
) -> GgufExport:
    """export -> verify -> gate: GGUF files of the merged model (`early`: being written already), each with its
    Ollama Modelfile, loaded by llama.cpp and held to the fine-tuned model on the test split
    (metrics/quantization.json): to the evaluate step's answers of the job that trained it (`answered`, default
    this job), else to the merged model's."""
    save = config.save
    assert run.gguf_dir is not None
    if early is not None:
        tracker.stage("convert", "finishing the GGUF files begun during the evaluate step")
        written = early.files()
    else:
        written = write_ggufs(merged, run.gguf_dir, save.gguf_types, tracker, check_stop)
    write_modelfiles(run, written, template, merged, config.model.max_seq_length)
    held_to = reference_answers(config, answered or run, merged, examples, template.stop_word, tracker, check_stop)
    examples = held_to.examples if held_to else []
    max_new_tokens = held_to.max_new_tokens if held_to else EVAL_MAX_NEW_TOKENS
    reference, merged_run = held_to.report() if held_to else (None, None)
    checked = verify_ggufs(
        written,
        examples,
        chrf,
        tracker,
        n_ctx=config.model.max_seq_length + max_new_tokens,
        max_new_tokens=max_new_tokens,
        check_stop=check_stop,
        end_of_turn=END_OF_TURN[template.name],
    )
    for item in checked:
        path = run.gguf_dir / item.pop("file")
        item["path"], item["modelfile"] = run.relative(path), run.relative(run.modelfile(path))
    max_drop = config.gates.quantization_max_drop
    reference_ended = merged_run["ended_turn"] if merged_run else None
    verdicts = judge_files(reference, checked, max_drop, save.max_gguf_bytes, reference_ended)
    gate = quantization_gate(reference, verdicts, max_drop)
    report = {
        "gate": gate.name.value,
        "status": gate.status.value,
        "passed": {"passed": True, "failed": False}.get(gate.status.value),
        "reference_score": reference,
        "max_drop": max_drop,
        "max_bytes": save.max_gguf_bytes,
        "files": verdicts,
        "metric": "chrf",
        "test_split": Path(config.evaluation.test_path).as_posix() if examples else None,
        "examples": len(examples),
        "max_new_tokens": max_new_tokens,
        "reference": {"model": held_to and held_to.model, "score": reference, **(merged_run or {"sample": None})},
    }
    write_json(run.quantization, report)
    result = GgufExport([item["path"] for item in verdicts], gate)
    log.info("%s: %s (%s)", gate.name.value, gate.status.value, json.dumps(result.summary))
    return result
