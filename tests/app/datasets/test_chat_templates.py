"""Each supported template renders what the model's published template renders, and masks the answers only.

The expected strings below are written out by hand from the published templates (google/gemma-3-*-it,
meta-llama/Llama-3.1-8B-Instruct, mistralai/Mistral-7B-Instruct-v0.3 as mistral_common tokenizes it,
Qwen/Qwen2.5-*-Instruct), not produced by this code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.datasets.encoding import IGNORE, Markers, encode, render
from app.datasets.templates import TEMPLATES, infer
from tests.conftest import stand_in_tokenizer

SINGLE = [
    {"role": "user", "content": "What is 5 + 3?"},
    {"role": "assistant", "content": "5 + 3 = 8."},
]
# A system prompt, two exchanges, and whitespace around one user message (templates differ on trimming).
MULTI = [
    {"role": "system", "content": "You are a maths tutor."},
    {"role": "user", "content": "What is 5 + 3?"},
    {"role": "assistant", "content": "5 + 3 = 8."},
    {"role": "user", "content": "  And 8 - 2?  "},
    {"role": "assistant", "content": "8 - 2 = 6."},
]
PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

LLAMA_HEADER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
QWEN_DEFAULT = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"

EXPECTED: dict[str, dict[str, str]] = {
    "gemma-3": {
        "single": (
            "<bos><start_of_turn>user\nWhat is 5 + 3?<end_of_turn>\n<start_of_turn>model\n5 + 3 = 8.<end_of_turn>\n"
        ),
        # The system prompt folded into the first user turn after a blank line; contents trimmed.
        "multi": (
            "<bos><start_of_turn>user\nYou are a maths tutor.\n\nWhat is 5 + 3?<end_of_turn>\n"
            "<start_of_turn>model\n5 + 3 = 8.<end_of_turn>\n"
            "<start_of_turn>user\nAnd 8 - 2?<end_of_turn>\n"
            "<start_of_turn>model\n8 - 2 = 6.<end_of_turn>\n"
        ),
        "prompt": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
    },
    "llama-3.1": {
        # Every conversation opens with the dated system block; an absent system prompt leaves it empty.
        "single": (
            LLAMA_HEADER + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 5 + 3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n5 + 3 = 8.<|eot_id|>"
        ),
        "multi": (
            LLAMA_HEADER + "You are a maths tutor.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 5 + 3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n5 + 3 = 8.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnd 8 - 2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n8 - 2 = 6.<|eot_id|>"
        ),
        "prompt": (
            LLAMA_HEADER + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    },
    "mistral": {
        "single": "<s>[INST] What is 5 + 3?[/INST] 5 + 3 = 8.</s>",
        # v3: the system prompt goes in front of the last user message; user text is not trimmed, answers are.
        "multi": (
            "<s>[INST] What is 5 + 3?[/INST] 5 + 3 = 8.</s>"
            "[INST] You are a maths tutor.\n\n  And 8 - 2?  [/INST] 8 - 2 = 6.</s>"
        ),
        # At inference time (the user's message last) this is also what the published template writes.
        "prompt": "<s>[INST] Be brief.\n\nHi[/INST]",
    },
    "qwen-2.5": {
        "single": (
            QWEN_DEFAULT + "<|im_start|>user\nWhat is 5 + 3?<|im_end|>\n<|im_start|>assistant\n5 + 3 = 8.<|im_end|>\n"
        ),
        "multi": (
            "<|im_start|>system\nYou are a maths tutor.<|im_end|>\n"
            "<|im_start|>user\nWhat is 5 + 3?<|im_end|>\n<|im_start|>assistant\n5 + 3 = 8.<|im_end|>\n"
            "<|im_start|>user\n  And 8 - 2?  <|im_end|>\n<|im_start|>assistant\n8 - 2 = 6.<|im_end|>\n"
        ),
        "prompt": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    },
}
# What the loss is computed on in MULTI: each answer and what closes it, up to the next turn's opener (or an
# end-of-sequence token, included).
TRAINED = {
    "gemma-3": ["5 + 3 = 8.<end_of_turn>\n", "8 - 2 = 6.<end_of_turn>\n"],
    "llama-3.1": ["5 + 3 = 8.<|eot_id|>", "8 - 2 = 6.<|eot_id|>"],
    "mistral": [" 5 + 3 = 8.</s>", " 8 - 2 = 6.</s>"],
    "qwen-2.5": ["5 + 3 = 8.<|im_end|>", "8 - 2 = 6.<|im_end|>"],
}


@pytest.fixture(scope="module", params=list(TEMPLATES))
def template_and_tokenizer(request: pytest.FixtureRequest, tokenizer_dir: Path) -> tuple[str, Any]:
    tokenizer = stand_in_tokenizer(tokenizer_dir, request.param)
    tokenizer.chat_template = TEMPLATES[request.param].jinja  # what the transformers backend does
    return request.param, tokenizer


def test_renders_the_published_text(template_and_tokenizer: tuple[str, Any]) -> None:
    name, tokenizer = template_and_tokenizer
    expected = EXPECTED[name]
    assert render(tokenizer, SINGLE) == expected["single"]
    assert render(tokenizer, MULTI) == expected["multi"]
    assert tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) == expected["prompt"]


def test_masks_every_answer_and_nothing_else(template_and_tokenizer: tuple[str, Any]) -> None:
    name, tokenizer = template_and_tokenizer
    markers = Markers.of(tokenizer, TEMPLATES[name])
    encoded = encode(tokenizer, render(tokenizer, MULTI), markers, max_length=4096)
    assert encoded.answers == 2 and not encoded.truncated
    assert all(label in (IGNORE, token) for token, label in zip(encoded.input_ids, encoded.labels, strict=True))
    runs: list[list[int]] = []  # consecutive trained tokens
    for i, label in enumerate(encoded.labels):
        if label != IGNORE:
            if not runs or encoded.labels[i - 1] == IGNORE:
                runs.append([])
            runs[-1].append(label)
    assert [tokenizer.decode(run) for run in runs] == TRAINED[name]


def test_gemma3_mask_token_by_token(tokenizer_dir: Path) -> None:
    """Multi-turn gemma-3: every assistant token, its <end_of_turn> (and the newline after it) included, is
    trained on; the system prompt, the user turns, <bos> and every turn marker are not."""
    tokenizer = stand_in_tokenizer(tokenizer_dir, "gemma-3")
    tokenizer.chat_template = TEMPLATES["gemma-3"].jinja
    encoded = encode(tokenizer, render(tokenizer, MULTI), Markers.of(tokenizer, TEMPLATES["gemma-3"]), 4096)
    pieces = [tokenizer.decode([token]) for token in encoded.input_ids]
    trained = [label != IGNORE for label in encoded.labels]
    # Walk the text turn by turn: the expected flag of each token follows from which turn it is in.
    expected: list[bool] = []
    text = ""
    turns = [
        ("<bos><start_of_turn>user\nYou are a maths tutor.\n\nWhat is 5 + 3?<end_of_turn>\n", False),
        ("<start_of_turn>model\n", False),
        ("5 + 3 = 8.<end_of_turn>\n", True),
        ("<start_of_turn>user\nAnd 8 - 2?<end_of_turn>\n", False),
        ("<start_of_turn>model\n", False),
        ("8 - 2 = 6.<end_of_turn>\n", True),
    ]
    position = 0
    for chunk, flag in turns:
        text += chunk
        while position < len(pieces) and len("".join(pieces[: position + 1])) <= len(text):
            expected.append(flag)
            position += 1
    assert "".join(pieces) == text and len(expected) == len(pieces)
    assert trained == expected
    ids = encoded.input_ids
    end_of_turn = [trained[i] for i, token in enumerate(ids) if token == 106]
    assert end_of_turn == [False, True, False, True]  # users' <end_of_turn> masked, the model's trained
    assert not any(trained[i] for i, token in enumerate(ids) if token in (2, 105))  # <bos>, <start_of_turn>


def test_truncation_keeps_the_mask_of_what_remains(tokenizer_dir: Path) -> None:
    tokenizer = stand_in_tokenizer(tokenizer_dir, "gemma-3")
    tokenizer.chat_template = TEMPLATES["gemma-3"].jinja
    markers = Markers.of(tokenizer, TEMPLATES["gemma-3"])
    full = encode(tokenizer, render(tokenizer, MULTI), markers, 4096)
    cut = encode(tokenizer, render(tokenizer, MULTI), markers, 30)
    assert cut.truncated and cut.length == len(full.input_ids) and len(cut.input_ids) == 30
    assert cut.labels == full.labels[:30] and cut.trained_tokens > 0


@pytest.mark.parametrize(
    ("model", "folder", "expected"),
    [
        ("embedded:gemma-3-270m", None, "gemma-3"),
        ("unsloth/gemma-3-4b-it", None, "gemma-3"),
        ("unsloth/Llama-3.1-8B-Instruct", None, "llama-3.1"),
        ("unsloth/Mistral-7B-Instruct-v0.3", None, "mistral"),
        ("unsloth/Qwen2.5-7B-Instruct", None, "qwen-2.5"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", None, None),  # Llama 3.0's template differs from 3.1's
        ("some/unknown-model", None, None),
    ],
)
def test_template_is_inferred_from_the_model_name(model: str, folder: Path | None, expected: str | None) -> None:
    assert infer(model, folder) == expected


def test_template_is_inferred_from_a_folders_model_type(tiny_model_dir: Path) -> None:
    assert infer(str(tiny_model_dir), tiny_model_dir) == "gemma-3"  # config.json: model_type gemma3_text
