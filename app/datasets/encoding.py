"""A conversation as the model sees it: templated text, token ids, and labels on the assistant's tokens only.

The labels follow the rule of Unsloth's `train_on_responses_only`, so the transformers backend trains on exactly
the tokens the Unsloth backend does: after each response marker (`<start_of_turn>model\\n` for gemma-3), up to
and including the first end-of-sequence token, or up to (not including) the next turn's opening special token,
the next marker, a beginning-of-sequence token, or the end of the text. For every template here that means the
answer and the token(s) that close it (`<end_of_turn>\\n`, `<|eot_id|>`, `</s>`, `<|im_end|>\\n`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.datasets.templates import ChatTemplate

IGNORE = -100


@dataclass(frozen=True)
class Markers:
    instruction: tuple[int, ...]
    response: tuple[int, ...]
    # The special tokens both markers open with (<start_of_turn>, <|im_start|>, ...): where any turn begins.
    opener: tuple[int, ...]
    bos: int | None
    eos: int | None

    @classmethod
    def of(cls, tokenizer: Any, template: ChatTemplate) -> Markers:
        instruction = tuple(tokenizer(template.instruction_part, add_special_tokens=False)["input_ids"])
        response = tuple(tokenizer(template.response_part, add_special_tokens=False)["input_ids"])
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
        special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if t.special}
        opener: list[int] = []
        for a, b in zip(instruction, response, strict=False):
            if a != b or a not in special:
                break
            opener.append(a)
        return cls(instruction, response, tuple(opener), tokenizer.bos_token_id, tokenizer.eos_token_id)


def _at(ids: list[int], i: int, seq: tuple[int, ...]) -> bool:
    return bool(seq) and ids[i] == seq[0] and tuple(ids[i : i + len(seq)]) == seq


def answer_spans(ids: list[int], markers: Markers) -> list[tuple[int, int]]:
    """[start, end) of every stretch of tokens trained on."""
    spans = []
    n, i = len(ids), 0
    while i < n:
        if not _at(ids, i, markers.response):
            i += 1
            continue
        start = i = i + len(markers.response)
        end = n
        while i < n:
            token = ids[i]
            if token == markers.eos:
                end = i + 1
                break
            if (
                token == markers.bos
                or _at(ids, i, markers.opener)
                or _at(ids, i, markers.response)
                or _at(ids, i, markers.instruction)
            ):
                end = i
                break
            i += 1
        if end > start:
            spans.append((start, end))
        i = end
    return spans


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    length: int  # tokens before truncation
    answers: int  # answer spans found in the full text

    @property
    def truncated(self) -> bool:
        return self.length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def render(tokenizer: Any, turns: list[dict[str, str]], chat_template: str | None = None) -> str:
    """The templated text; `chat_template` None uses the one installed on the tokenizer."""
    text = tokenizer.apply_chat_template(turns, chat_template=chat_template, tokenize=False)
    return str(text)


def encode(tokenizer: Any, text: str, markers: Markers, max_length: int) -> Encoded:
    """Token ids of templated text (its special tokens are already in it) and the assistant-only labels."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    labels = [IGNORE] * len(ids)
    spans = answer_spans(ids, markers)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return Encoded(input_ids=ids[:max_length], labels=labels[:max_length], length=len(ids), answers=len(spans))
