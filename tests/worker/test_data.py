"""ShareGPT reading, the gemma-3 template and the assistant-only loss mask, with the real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from worker.chat_templates import GEMMA_3, TURN_MARKERS
from worker.data import DataError, read_sharegpt, tokenize_with_mask

MULTI_TURN = [
    {"role": "system", "content": "You are a maths tutor."},
    {"role": "user", "content": "What is 5 + 3?"},
    {"role": "assistant", "content": "5 + 3 = 8."},
    {"role": "user", "content": "  And 8 - 2?  "},
    {"role": "assistant", "content": "8 - 2 = 6."},
]
# What Gemma 3's published chat template renders for MULTI_TURN: the system prompt folded into the first
# user turn after a blank line, `model` for the assistant, contents trimmed, each turn closed by <end_of_turn>.
MULTI_TURN_TEXT = (
    "<bos><start_of_turn>user\nYou are a maths tutor.\n\nWhat is 5 + 3?<end_of_turn>\n"
    "<start_of_turn>model\n5 + 3 = 8.<end_of_turn>\n"
    "<start_of_turn>user\nAnd 8 - 2?<end_of_turn>\n"
    "<start_of_turn>model\n8 - 2 = 6.<end_of_turn>\n"
)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = GEMMA_3
    return tok


def test_gemma3_template_renders_the_published_format(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert tokenizer.apply_chat_template(MULTI_TURN, tokenize=False) == MULTI_TURN_TEXT
    single = [{"role": "user", "content": "Hi"}]
    assert (
        tokenizer.apply_chat_template(single, tokenize=False, add_generation_prompt=True)
        == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_mask_trains_on_assistant_tokens_and_their_end_of_turn_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    row = tokenize_with_mask(tokenizer, MULTI_TURN_TEXT, max_length=512, **TURN_MARKERS["gemma-3"])
    ids, labels = row["input_ids"], row["labels"]
    assert ids[0] == 2  # <bos>
    trained = [tokenizer.decode([i]) for i, label in zip(ids, labels, strict=True) if label != -100]
    assert "".join(trained) == "5 + 3 = 8.<end_of_turn>\n8 - 2 = 6.<end_of_turn>\n"
    assert all(label in (-100, token) for token, label in zip(ids, labels, strict=True))
    # Token by token: the prompt side, every <start_of_turn> and the role names are masked out.
    for token, label in zip(ids, labels, strict=True):
        if token in (2, 105):  # <bos>, <start_of_turn>
            assert label == -100
    end_of_turn = [label for token, label in zip(ids, labels, strict=True) if token == 106]
    assert end_of_turn == [-100, 106, -100, 106]  # user turns' ends masked, model turns' ends trained


def test_mask_survives_truncation(tokenizer) -> None:  # type: ignore[no-untyped-def]
    row = tokenize_with_mask(tokenizer, MULTI_TURN_TEXT, max_length=20, **TURN_MARKERS["gemma-3"])
    assert len(row["input_ids"]) == 20 and row["truncated"] and row["tokens"] == 20


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_good_rows_are_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", [json.dumps({"conversations": MULTI_TURN}), ""])
    assert read_sharegpt(path).items == [MULTI_TURN]


def test_bad_rows_are_reported_by_line(tmp_path: Path) -> None:
    good = json.dumps({"conversations": MULTI_TURN[1:3]})
    path = _write(
        tmp_path / "train.jsonl",
        [
            good,
            "{not json",
            json.dumps({"messages": []}),
            json.dumps({"conversations": [{"role": "bot", "content": "x"}]}),
            json.dumps({"conversations": [{"role": "user", "content": " "}]}),
            json.dumps({"conversations": [{"role": "user", "content": "hi"}]}),
            json.dumps({"conversations": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
        ],
    )
    with pytest.raises(DataError) as info:
        read_sharegpt(path)
    message = str(info.value)
    assert message.startswith(f"6 bad row(s) in {path}: ")
    for expected in [
        "train.jsonl:2: not JSON",
        'train.jsonl:3: expected an object with a "conversations" list',
        "train.jsonl:4: conversations[0].role is 'bot'",
        "train.jsonl:5: conversations[0].content is empty",
        "train.jsonl:6: no assistant turn",
        "train.jsonl:7: turns must alternate",
    ]:
        assert expected in message
    assert "train.jsonl:1" not in message
