"""On a GPU: for the same 50 conversations, Unsloth's train_on_responses_only and the transformers backend
train on exactly the same tokens, for every supported template.

No model is needed, only tokenizers: the real Gemma 3 tokenizer for gemma-3, and for the other templates Gemma's
vocabulary with that model's special tokens (tests.conftest.stand_in_tokenizer). Each backend installs its
template its own way (Unsloth through get_chat_template, transformers by setting the string) and prepares the
rows with its own prepare_data; the Unsloth labels come from train_on_responses_only itself.

    pytest -m gpu tests/worker/test_masks_gpu.py -s
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.datasets.templates import TEMPLATES
from app.demo_data import generate
from app.training_config import TrainingConfig
from tests.conftest import GPU_ONLY, stand_in_tokenizer

pytestmark = GPU_ONLY


def conversations(n: int = 50) -> list[dict[str, Any]]:
    """Single- and multi-turn (up to 3 exchanges), with and without a system prompt, some long enough to be cut."""
    pool = [row["conversations"] for row in generate(3 * n, seed=11)]
    exchanges = [turns[-2:] for turns in pool]
    rows = []
    for i in range(n):
        turns: list[dict[str, str]] = []
        if i % 2 == 0:
            turns.append({"role": "system", "content": "You are a patient maths tutor. Answer in one sentence."})
        for k in range(1 + i % 3):
            turns.extend(exchanges[(3 * i + k) % len(exchanges)])
        if i % 7 == 0:  # a long answer, truncated at max_seq_length
            turns[-1] = {"role": "assistant", "content": turns[-1]["content"] + " Let me explain." * 30}
        rows.append({"conversations": turns})
    return rows


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_unsloth_and_transformers_masks_are_identical(name: str, tokenizer_dir: Path, tmp_path: Path) -> None:
    import unsloth  # noqa: F401  (before transformers, trl and peft)
    from unsloth.chat_templates import train_on_responses_only

    from app.datasets import templates
    from app.resolve import data_files
    from worker.backends.transformers_backend import TransformersBackend
    from worker.backends.unsloth_backend import UnslothBackend
    from worker.data import prepare

    template = TEMPLATES[name]
    rows = conversations()
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainingConfig.model_validate(
        {
            "model": {"name": "stand-in", "max_seq_length": 160},
            "dataset": {
                "path": "data/train.jsonl",
                "val_path": None,
                "chat_template": name,
                "invalid_rows": "drop",
                "max_dropped_fraction": 1.0,
            },
        }
    )

    unsloth_backend = UnslothBackend()
    unsloth_backend.template = template
    unsloth_tokenizer = unsloth_backend.install_template(stand_in_tokenizer(tokenizer_dir, name))
    unsloth_data = prepare(unsloth_tokenizer, template, config, data_files(config, tmp_path))
    unsloth_train, _ = unsloth_backend.prepare_data(unsloth_data)
    mask = train_on_responses_only(
        None,
        instruction_part=template.instruction_part,
        response_part=template.response_part,
        tokenizer=unsloth_tokenizer,
        return_function=True,
    )
    unsloth_labels = mask({"input_ids": unsloth_train["input_ids"]})["labels"]

    hf_tokenizer = templates.install(stand_in_tokenizer(tokenizer_dir, name), template)
    hf_data = prepare(hf_tokenizer, template, config, data_files(config, tmp_path))
    hf_train, _ = TransformersBackend().prepare_data(hf_data)

    texts = [
        (
            unsloth_tokenizer.apply_chat_template(r["conversations"], tokenize=False),
            hf_tokenizer.apply_chat_template(r["conversations"], tokenize=False),
        )
        for r in rows
    ]
    same_text = sum(a == b for a, b in texts)
    same_ids = unsloth_train["input_ids"] == hf_train["input_ids"]
    differing = [i for i, (a, b) in enumerate(zip(unsloth_labels, hf_train["labels"], strict=True)) if a != b]
    trained = sum(1 for labels in hf_train["labels"] for label in labels if label != -100)
    tokens = sum(len(ids) for ids in hf_train["input_ids"])
    print(
        f"MASKS {name}: {len(rows)} conversations, {len(hf_train)} kept ({hf_data.stats['truncated']} truncated), "
        f"text identical {same_text}/{len(rows)}, ids identical {same_ids}, {tokens} tokens, {trained} trained, "
        f"rows whose masks differ: {len(differing)}"
    )
    assert same_text == len(rows)
    assert same_ids and len(hf_train) == len(rows)
    assert not differing, [
        (i, unsloth_labels[i], hf_train["labels"][i], hf_train["input_ids"][i]) for i in differing[:2]
    ]
