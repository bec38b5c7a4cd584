"""The evaluation step's parts: the test set, scoring through a generate callable, answer loss, generation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from app.datasets.templates import TEMPLATES
from app.training_config import EvaluationSection
from worker import evaluation, generation
from worker.data import DataError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [
    {
        "conversations": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Kofi buys 2 pencils at GH₵1. How much?"},
            {"role": "assistant", "content": "Kofi pays 2 × GH₵1 = GH₵2."},
        ]
    },
    {
        "conversations": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Where is Axim?"},
            {"role": "assistant", "content": "Axim is in the Western Region of Ghana."},
        ],
        "expected_terms": ["Ghana"],
    },
    {"conversations": [{"role": "user", "content": "What is 5 + 3?"}, {"role": "assistant", "content": "8"}]},
]


def test_load_test_set_splits_prompt_and_reference(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", ROWS)
    examples = evaluation.load_test_set(path, EvaluationSection(), glossary=["Kofi", "GH₵", "Axim", "Ama"])
    assert [e.reference for e in examples] == [
        "Kofi pays 2 × GH₵1 = GH₵2.",
        "Axim is in the Western Region of Ghana.",
        "8",
    ]
    assert examples[0].prompt == ROWS[0]["conversations"][:2]
    assert examples[1].prompt == ROWS[1]["conversations"][:3]  # earlier turns stay as context
    assert [e.expected_terms for e in examples] == [["Kofi", "GH₵"], ["Ghana", "Axim"], []]
    assert examples[1].conversation == ROWS[1]["conversations"]
    assert len(evaluation.load_test_set(path, EvaluationSection(max_examples=2))) == 2


def test_bad_terms_and_glossaries_are_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [ROWS[2], {**ROWS[2], "expected_terms": "Kofi"}])
    with pytest.raises(DataError, match=r"test.jsonl:2: expected_terms must be a list"):
        evaluation.load_test_set(path, EvaluationSection())
    bad = tmp_path / "glossary.json"
    bad.write_text('{"Kofi": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        evaluation.load_glossary(bad)
    bad.write_text("[")
    with pytest.raises(DataError, match="not readable JSON"):
        evaluation.load_glossary(bad)


def test_score_uses_any_generate_callable(tmp_path: Path) -> None:
    """What the GGUF export relies on: a generate(prompts) -> answers callable is all score needs."""
    path = write_jsonl(tmp_path / "test.jsonl", ROWS)
    examples = evaluation.load_test_set(path, EvaluationSection(), glossary=["Kofi", "GH₵"])
    answers = {
        "Kofi buys 2 pencils at GH₵1. How much?": "Kofi pays 2 × GH₵1 = GH₵2.",
        "Where is Axim?": "It is in Ghana.",
        "What is 5 + 3?": "9",
    }
    batches: list[int] = []
    seen: list[tuple[int, int]] = []

    def generate(prompts: list[list[dict[str, str]]]) -> list[str]:
        batches.append(len(prompts))
        return [answers[prompt[-1]["content"]] for prompt in prompts]

    metrics, samples = evaluation.score(
        examples, generate, batch_size=2, progress=lambda done, total: seen.append((done, total))
    )
    assert batches == [2, 1] and seen == [(2, 3), (3, 3)]
    assert metrics["exact_match"] == pytest.approx(1 / 3, abs=1e-6)
    # Only the first example expects local terms (Kofi, GH₵) and its answer has them.
    assert metrics["localization_score"] == 1.0
    assert samples[1]["answer"] == "It is in Ghana." and samples[1]["reference"].startswith("Axim")
    assert [s["exact_match"] for s in samples] == [1.0, 0.0, 0.0]

    with pytest.raises(RuntimeError, match="returned 1 answers for 3 prompts"):
        evaluation.score(examples, lambda prompts: ["x"], batch_size=8)

    # Answered in another order (longest first), the samples still come in the split's order.
    asked: list[str] = []
    in_order = evaluation.score(
        examples, lambda ps: asked.extend(p[-1]["content"] for p in ps) or generate(ps), batch_size=2, order=[2, 0, 1]
    )
    assert asked == ["What is 5 + 3?", "Kofi buys 2 pencils at GH₵1. How much?", "Where is Axim?"]
    assert in_order == (metrics, samples)


def test_write_samples_replaces_one_stage(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "samples.jsonl"
    evaluation.write_samples(path, "evaluate", [{"index": 0, "answer": "new"}])
    evaluation.write_samples(path, "baseline", [{"index": 0, "answer": "base"}, {"index": 1, "answer": "b1"}])
    evaluation.write_samples(path, "evaluate", [{"index": 0, "answer": "newer"}])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    stages = [(r["stage"], r["answer"]) for r in rows]
    assert stages == [("baseline", "base"), ("baseline", "b1"), ("evaluate", "newer")]
    assert not list(path.parent.glob("*.tmp"))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = TEMPLATES["gemma-3"].jinja
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), tokenizer


def _by_hand(model: torch.nn.Module, tokenizer: object, example: evaluation.TestExample) -> tuple[float, int]:
    """Summed cross-entropy over the reference answer's tokens, from the logits of one unpadded sequence."""
    text = tokenizer.apply_chat_template(example.conversation, tokenize=False)  # type: ignore[attr-defined]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    start = text.rindex("<start_of_turn>model\n") + len("<start_of_turn>model\n")
    answer_from = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    total = -sum(float(log_probs[i - 1, ids[i]]) for i in range(answer_from, len(ids)))
    return total, len(ids) - answer_from


def test_answer_loss_is_the_mean_over_answer_tokens(tmp_path: Path, tiny: tuple) -> None:
    model, tokenizer = tiny
    axim = {"role": "user", "content": "Where is Axim?"}, {"role": "assistant", "content": "In Ghana's west."}
    # Single-answer conversations: every answer token is the reference's.
    rows = [ROWS[0], ROWS[2], {"conversations": list(axim)}]
    examples = evaluation.load_test_set(write_jsonl(tmp_path / "t.jsonl", rows), EvaluationSection())
    sums = [_by_hand(model, tokenizer, e) for e in examples]
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    # Padding a batch must not change it, nor must fixed shapes (CUDA's default): a width bucket of 64 tokens, a
    # short batch filled up with a row that scores nothing.
    for batch_size, fixed in ((1, False), (2, False), (2, True)):
        result = evaluation.answer_loss(
            model,
            tokenizer,
            examples,
            template=TEMPLATES["gemma-3"],
            max_length=256,
            batch_size=batch_size,
            fixed_shapes=fixed,
        )
        assert result["answer_tokens"] == sum(n for _, n in sums)
        assert result["test_loss"] == pytest.approx(expected, rel=1e-4)
        assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-3)


def test_batched_generation_matches_one_by_one(tmp_path: Path, tiny: tuple) -> None:
    model, tokenizer = tiny
    examples = evaluation.load_test_set(write_jsonl(tmp_path / "t.jsonl", ROWS), EvaluationSection())
    settings = EvaluationSection(max_new_tokens=6)
    prompts = [e.prompt for e in examples]
    alone = [
        evaluation.model_generator(model, tokenizer, settings, "<end_of_turn>", 0, rows=1)([p])[0] for p in prompts
    ]
    together = evaluation.model_generator(model, tokenizer, settings, "<end_of_turn>", 0, rows=3)
    assert together(prompts) == alone and all(isinstance(a, str) for a in alone)
    assert tokenizer.padding_side == "right"  # restored after generating
    # A random model never ends its turn: every answer runs to the budget, and each of its tokens is counted.
    assert together.ended == [False] * 3 and together.throughput()["generated_tokens"] == 3 * 6

    # Fixed shapes (CUDA's default): a width bucket of 64 tokens, a short batch filled up with copies of its last
    # prompt. The padding is masked and the copies' answers dropped: the same answers.
    fixed = evaluation.model_generator(model, tokenizer, settings, "<end_of_turn>", 0, rows=4)
    fixed.fixed_shapes = True
    assert fixed(prompts[:2]) + fixed(prompts[2:]) == alone
    assert fixed.ended == [False] * 3 and fixed.generated_tokens == 3 * 6 and fixed.widths == {64}

    # A batch after a wider one takes the width already run (its kernels compiled) when it fits: more padding, the
    # same answers.
    long = [{"role": "user", "content": "Kofi buys pencils in Axim. " * 12}]
    wide = evaluation.model_generator(model, tokenizer, settings, "<end_of_turn>", 0, rows=2)
    wide.fixed_shapes = True
    wide([long, prompts[0]])
    assert wide(prompts[1:]) == alone[1:] and wide.widths == {128}


def test_the_inference_prompts_are_answered_in_the_test_splits_batches(tmp_path: Path, tiny: tuple) -> None:
    """They take no batch of their own (a batch on a GPU is 128 decode steps; a new shape, a compile): three test
    rows and one inference prompt go in one batch of four, and each answer is the one it gets alone."""
    model, tokenizer = tiny
    examples = evaluation.load_test_set(write_jsonl(tmp_path / "t.jsonl", ROWS), EvaluationSection())
    settings = EvaluationSection(max_new_tokens=6, batch_size=4)
    asked = [{"role": "user", "content": "What is 5 + 3?"}]

    def alone(prompt: list[dict[str, str]]) -> str:
        return evaluation.model_generator(model, tokenizer, settings, "<end_of_turn>", 0, rows=1)([prompt])[0]

    seen: list[tuple[int, int]] = []
    generate, _, samples, answers = evaluation.answer(
        model, tokenizer, examples, settings, "<end_of_turn>", 0, lambda *done: seen.append(done), [asked]
    )
    assert seen == [(3, 3)] and generate.rows == 4  # one batch, holding all four
    assert answers == [alone(asked)]
    assert [row["answer"] for row in samples] == [alone(e.prompt) for e in examples]
    assert [row["ended_turn"] for row in samples] == [False] * 3


def test_a_split_is_answered_longest_first_in_batches_of_one_size() -> None:
    assert generation.by_length([5, 9, 5, 12]) == [3, 1, 0, 2]  # ties keep the file's order
    assert [generation.batch_rows(n, 64) for n in (1, 40, 64, 65, 200)] == [1, 40, 64, 33, 50]
    assert [generation.bucket(w) for w in (1, 64, 65, 300)] == [64, 64, 128, 512]
    assert generation.resolved_batch("auto", on_gpu=True) == 64 and generation.resolved_batch("auto", False) == 8
    assert generation.resolved_batch(3, on_gpu=True) == 3
    with pytest.raises(ValidationError, match=r'batch_size\n.*or "auto"'):
        EvaluationSection(batch_size=0)


def test_test_examples_stop_before_the_last_answer(tmp_path: Path) -> None:
    rows = [
        {"conversations": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {
            "conversations": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ]
        },
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples = evaluation.read_test_split(path, "expected_terms")
    assert [(len(e.prompt), e.prompt[-1]["content"], e.reference) for e in examples] == [
        (1, "2+2?", "4"),
        (4, "Capital of France?", "Paris"),
    ]
    assert len(evaluation.load_test_set(path, EvaluationSection(max_examples=1))) == 1


# ------------------------------------------------------------------------------------------------ slices


def test_a_tagged_test_split_is_scored_per_slice_as_the_whole_split_is(tmp_path: Path) -> None:
    tagged = [ROWS[0] | {"category": "money"}, ROWS[1] | {"category": 7}, ROWS[2]]
    examples = evaluation.read_test_split(write_jsonl(tmp_path / "t.jsonl", tagged), "expected_terms", (), "category")
    assert [e.tag for e in examples] == ["money", "7", None]
    answers = ["Kofi pays 2 × GH₵1 = GH₵2.", "It is in Ghana.", "9"]
    metrics, samples = evaluation.score(examples, lambda prompts: answers[: len(prompts)], batch_size=8)
    assert [s.get("slice") for s in samples] == ["money", "7", None]

    tags = {s["index"]: s["slice"] for s in samples if "slice" in s}
    slices = evaluation.slice_metrics(samples, tags)
    assert list(slices) == ["(none)", "7", "money"]
    assert slices["money"]["examples"] == 1 and slices["money"]["exact_match"] == 1.0
    assert slices["7"]["exact_match"] == 0.0 and slices["7"]["localization_score"] == 1.0  # "Ghana" is used
    assert slices["(none)"]["token_f1"] == 0.0 and slices["(none)"]["localization_score"] is None
    # One slice holding every row is the whole split, to the digit (chrF is corpus-level, not a mean).
    whole = evaluation.slice_metrics(samples, {})["(none)"]
    assert {k: v for k, v in whole.items() if k != "examples"} == metrics


def test_a_tag_that_is_not_a_scalar_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [ROWS[2], ROWS[2] | {"category": ["a"]}])
    with pytest.raises(DataError, match=r"t.jsonl:2: category \(gates.slice_field\)"):
        evaluation.read_test_split(path, "expected_terms", (), "category")
