"""The spec's `baseline` and `evaluate` steps: a model on the test split, scored the same way both times.

`score` only needs the test examples and a `generate(prompts) -> answers` callable, so anything that can
answer a batch of conversations (a transformers or Unsloth model here, a llama.cpp GGUF in the export step)
is scored by the same code. `answer_loss` adds the test loss and perplexity of the reference answers, which
needs the model itself.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import files
from app.datasets.encoding import IGNORE, Markers, encode
from app.datasets.formats import RowProblem, check_order, convert, detect
from app.datasets.templates import ChatTemplate
from app.training_config import PERPLEXITY, TEST_LOSS, EvaluationSection, TrainingConfig
from worker import generation
from worker.data import DataError
from worker.metrics import expected_terms, score_answers

Conversation = list[dict[str, str]]
# Answers a batch of prompt conversations (each ending with a user turn), one string per prompt, in order.
Generate = Callable[[list[Conversation]], list[str]]
Progress = Callable[[int, int], None]


@dataclass
class TestExample:
    prompt: Conversation  # the turns before the reference answer
    reference: str  # the last assistant turn
    expected_terms: list[str] = field(default_factory=list)
    tag: str | None = None  # the row's gates.slice_field value, when slices are asked for

    @property
    def conversation(self) -> Conversation:
        return [*self.prompt, {"role": "assistant", "content": self.reference}]


def load_glossary(path: Path) -> list[str]:
    """A JSON list of local terms."""
    try:
        terms = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"evaluation.glossary_path {path}: not readable JSON ({exc})") from exc
    if not isinstance(terms, list) or not all(isinstance(t, str) and t.strip() for t in terms):
        raise DataError(f"evaluation.glossary_path {path}: expected a JSON list of non-empty strings")
    return [t.strip() for t in terms]


def read_rows(
    path: Path, terms_field: str, slice_field: str | None = None
) -> list[tuple[list[dict[str, str]], list[str], str | None]]:
    """Each row's turns (any format the datasets accept, told row by row), its own expected terms and its tag."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                converted = convert(raw, detect(raw) or "sharegpt")
                check_order(converted)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name}:{number}: not JSON ({exc.msg})") from exc
            except RowProblem as exc:
                raise DataError(f"{path.name}:{number}: {exc.field or 'row'}: {exc.message}") from exc
            value = raw.get(terms_field, [])
            if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
                raise DataError(f"{path.name}:{number}: {terms_field} must be a list of non-empty strings")
            tag = raw.get(slice_field) if slice_field else None
            if isinstance(tag, dict | list):
                raise DataError(f"{path.name}:{number}: {slice_field} (gates.slice_field) must be a string or a number")
            rows.append((converted.turns, [t.strip() for t in value], None if tag is None else str(tag)))
    if not rows:
        raise DataError(f"{path} has no rows to evaluate on")
    return rows


def read_test_split(
    path: Path, terms_field: str, glossary: Sequence[str] = (), slice_field: str | None = None
) -> list[TestExample]:
    """Every example of the test split: prompt, reference answer (the last assistant turn), expected local terms and
    its tag (slice_field)."""
    examples = []
    for turns, own_terms, tag in read_rows(path, terms_field, slice_field):
        last = max(i for i, turn in enumerate(turns) if turn["role"] == "assistant")
        reference = turns[last]["content"]
        examples.append(TestExample(turns[:last], reference, expected_terms(reference, glossary, own_terms), tag))
    return examples


def load_test_set(path: Path, settings: EvaluationSection, glossary: Sequence[str] = ()) -> list[TestExample]:
    """The examples the baseline and evaluate steps score: the first evaluation.max_examples of the test split."""
    return scored_examples(read_test_split(path, settings.terms_field, glossary), settings)


def scored_examples(examples: list[TestExample], settings: EvaluationSection) -> list[TestExample]:
    return examples[: settings.max_examples] if settings.max_examples else examples


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def score(
    examples: Sequence[TestExample],
    generate: Generate,
    *,
    batch_size: int,
    progress: Progress | None = None,
    order: Sequence[int] | None = None,
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """Generate an answer to each example and score them: the metrics and one sample row per example, in the
    examples' order. `order`: the order they are answered in (generation.by_length), batch by batch."""
    return scored(examples, generation.answer_all([e.prompt for e in examples], generate, batch_size, order, progress))


def scored(
    examples: Sequence[TestExample], answers: Sequence[str]
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """The examples' `answers` scored: the metrics and one sample row per example."""
    metrics, per_answer = score_answers(answers, [e.reference for e in examples], [e.expected_terms for e in examples])
    samples = [
        {"index": i, "prompt": example.prompt, "reference": example.reference, "answer": answer, **scores}
        | ({"slice": example.tag} if example.tag is not None else {})
        for i, (example, answer, scores) in enumerate(zip(examples, answers, per_answer, strict=True))
    ]
    return metrics, samples


UNTAGGED = "(none)"  # the slice of the test rows without a gates.slice_field value


def slice_metrics(rows: Sequence[dict[str, Any]], tags: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Each slice's answer metrics, computed on its own rows exactly as the whole split's are (score_answers);
    `tags` maps a sample's index to its slice. test_loss and perplexity need the model: whole split only."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tags.get(row["index"], UNTAGGED), []).append(row)
    return {
        tag: {
            "examples": len(group),
            **score_answers(
                [r["answer"] for r in group],
                [r["reference"] for r in group],
                [r.get("expected_terms", []) for r in group],
            )[0],
        }
        for tag, group in sorted(groups.items())
    }


# ------------------------------------------------------------------------------------------ with a model


def model_generator(
    model: Any, tokenizer: Any, settings: EvaluationSection, stop_word: str, seed: int, rows: int
) -> generation.Generator:
    """The evaluation steps' generation: settings.max_new_tokens, greedy unless settings.do_sample."""
    sampling = (
        {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
        if settings.do_sample
        else None
    )
    stops = generation.stop_ids(tokenizer, stop_word)
    budget = settings.max_new_tokens
    return generation.Generator(
        model, tokenizer, max_new_tokens=budget, stop_ids=stops, sampling=sampling, seed=seed, rows=rows
    )


def answer(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TestExample],
    settings: EvaluationSection,
    stop_word: str,
    seed: int,
    progress: Progress | None = None,
    asked: Sequence[Conversation] = (),
) -> tuple[generation.Generator, dict[str, float | None], list[dict[str, Any]], list[str]]:
    """The examples answered as the evaluation steps answer them: longest first, in batches of one size
    (settings.batch_size resolved for the model's device). `asked`: more prompts (the inference prompts) answered
    in the same batches, so they cost no batch, and no shape, of their own. Returns the generator (its
    throughput), the metrics, one sample row per example with whether it ended its turn, and the answers to
    `asked`."""
    prompts = [e.prompt for e in examples] + list(asked)
    on_gpu = next(model.parameters()).device.type == "cuda"
    rows = generation.batch_rows(len(prompts), generation.resolved_batch(settings.batch_size, on_gpu))
    generate = model_generator(model, tokenizer, settings, stop_word, seed, rows)
    order = generation.by_length(generate.lengths(prompts))
    answers = generation.answer_all(prompts, generate, rows, order, progress, counted=len(examples))
    metrics, samples = scored(examples, answers[: len(examples)])
    for i, ended in zip(order, generate.ended, strict=True):
        if i < len(examples):
            samples[i]["ended_turn"] = ended
    return generate, metrics, samples, answers[len(examples) :]


def answer_loss(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TestExample],
    *,
    template: ChatTemplate,
    max_length: int,
    batch_size: int,
    fixed_shapes: bool | None = None,
) -> dict[str, float | int | None]:
    """Mean cross-entropy per reference-answer token (the tokens training learns from) and its perplexity.
    `fixed_shapes` (default: on CUDA) gives every batch one of a few shapes, as the generation does."""
    import torch

    text = generation.text_tokenizer(tokenizer)
    markers = Markers.of(text, template)
    rows = []
    for example in examples:
        templated = tokenizer.apply_chat_template(example.conversation, tokenize=False)
        encoded = encode(text, templated, markers, max_length)
        if sum(label != IGNORE for label in encoded.labels[1:]) > 0:  # a truncated answer has nothing to score
            rows.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    device = next(model.parameters()).device
    pad = text.pad_token_id if text.pad_token_id is not None else 0
    # On CUDA the batches take a few fixed shapes, as the generation's do (a compiled forward compiles once per
    # shape): longest rows first, all batches of one size (a short last one filled with rows that score nothing),
    # right-padded to a width bucket (or a wider one already run). Padding sits after every scored token, so the
    # loss is the unpadded one.
    fixed = device.type == "cuda" if fixed_shapes is None else fixed_shapes
    widths: set[int] = set()
    if fixed and rows:
        rows.sort(key=lambda r: -len(r["input_ids"]))
        batch_size = generation.batch_rows(len(rows), batch_size)
    total, count = 0.0, 0
    for batch in batches(rows, batch_size):
        width = max(len(r["input_ids"]) for r in batch)
        if fixed:
            filler = {"input_ids": batch[-1]["input_ids"], "labels": [IGNORE] * len(batch[-1]["labels"])}
            batch = [*batch, *[filler] * (batch_size - len(batch))]
            width = generation.fixed_width(widths, width)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch], device=device)
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch], device=device)
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask.to(device), labels=labels)
        # The model's loss is the mean over the batch's predicted tokens; weigh it back to a sum.
        tokens = int((labels[:, 1:] != -100).sum())
        total += float(out.loss) * tokens
        count += tokens
    loss = total / count if count else None
    return {
        TEST_LOSS: None if loss is None else round(loss, 6),
        PERPLEXITY: None if loss is None else round(math.exp(min(loss, 700.0)), 6),
        "answer_tokens": count,
    }


@dataclass
class StageScore:
    """A baseline or evaluate step's scoring: metrics/<stage>.json, and its rows of samples.jsonl."""

    report: dict[str, Any]
    samples: list[dict[str, Any]]
    inference: list[dict[str, Any]]  # the answers to evaluation.inference_prompts (evaluate step only)


def score_stage(
    stage: str,
    model: Any,
    tokenizer: Any,
    examples: Sequence[TestExample],
    template: ChatTemplate,
    config: TrainingConfig,
    progress: Progress,
) -> StageScore:
    """The model (ready for inference) on the test split: answer loss, generated answers and their metrics."""
    settings = config.evaluation
    started = time.monotonic()
    on_gpu = next(model.parameters()).device.type == "cuda"
    largest = generation.resolved_batch(settings.batch_size, on_gpu)
    loss = answer_loss(
        model,
        tokenizer,
        examples,
        template=template,
        max_length=config.model.max_seq_length,
        batch_size=largest if isinstance(settings.batch_size, int) else min(largest, generation.LOSS_BATCH),
    )
    loss_seconds = time.monotonic() - started
    # Both steps answer the inference prompts (the same shapes to compile); the baseline's answers are dropped.
    asked = [[{"role": "user", "content": prompt}] for prompt in settings.inference_prompts]
    generate, metrics, samples, answers = answer(
        model, tokenizer, examples, settings, template.stop_word, config.training.seed, progress, asked
    )
    decoding = generate.throughput() | {"answer_loss_seconds": round(loss_seconds, 3)}
    if stage != "evaluate":
        asked, answers = [], []
    report = {
        "stage": stage,
        "model": config.model.name + (" + LoRA (fine-tuned)" if stage == "evaluate" else " (base)"),
        "test_path": settings.test_path,
        "examples": len(examples),
        "metrics": {"test_loss": loss["test_loss"], "perplexity": loss["perplexity"], **metrics},
        "answer_tokens": loss["answer_tokens"],
        "generation": settings.model_dump(include={"max_new_tokens", "do_sample", "temperature", "top_p", "top_k"}),
        "decoding": decoding,
        "seconds": round(time.monotonic() - started, 3),
    }
    inference = [{"index": i, "prompt": p, "answer": a} for i, (p, a) in enumerate(zip(asked, answers, strict=True))]
    return StageScore(report, samples, inference)


# ------------------------------------------------------------------------------------------------- files


def read_samples(path: Path, stage: str | None = None) -> list[dict[str, Any]]:
    """The rows of samples.jsonl, of one stage or all ([] when there is no file yet)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if stage is None or row.get("stage") == stage]


def write_samples(path: Path, stage: str, rows: list[dict[str, Any]]) -> None:
    """Replace one stage's rows in samples.jsonl (baseline, evaluate, inference), keeping the other stages'."""
    kept = [row for row in read_samples(path) if row.get("stage") != stage]
    order = {"baseline": 0, "evaluate": 1, "inference": 2}
    merged = sorted(kept + [{"stage": stage, **row} for row in rows], key=lambda r: order.get(r["stage"], 3))
    files.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in merged))
