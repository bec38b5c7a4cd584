"""Reading the spec's ShareGPT JSONL and turning conversations into token ids with an assistant-only loss mask."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A dataset a person must fix; the message names the file and line."""

    code = "dataset_invalid"


@dataclass
class Conversations:
    path: Path
    items: list[list[dict[str, str]]] = field(default_factory=list)


def _check_row(row: Any) -> list[dict[str, str]]:
    if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
        raise ValueError('expected an object with a "conversations" list')
    turns = row["conversations"]
    if not turns:
        raise ValueError("conversations is empty")
    clean = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"conversations[{i}] is not an object")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise ValueError(f"conversations[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"conversations[{i}].content is empty or not a string")
        clean.append({"role": role, "content": content})
    body = clean[1:] if clean[0]["role"] == "system" else clean
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise ValueError(
                f"turns must alternate user/assistant after an optional system turn; turn {i} is {turn['role']}"
            )
    if not any(t["role"] == "assistant" for t in body):
        raise ValueError("no assistant turn to learn from")
    return clean


def read_sharegpt(path: Path, max_errors: int = 20) -> Conversations:
    """Read every row; raise one DataError listing the bad lines (up to max_errors of them)."""
    result = Conversations(path=path)
    problems: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                result.items.append(_check_row(json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(f"{path.name}:{number}: not JSON ({exc.msg})")
            except ValueError as exc:
                problems.append(f"{path.name}:{number}: {exc}")
    if problems:
        shown = "; ".join(problems[:max_errors])
        more = f" (and {len(problems) - max_errors} more)" if len(problems) > max_errors else ""
        raise DataError(f"{len(problems)} bad row(s) in {path}: {shown}{more}")
    if not result.items:
        raise DataError(f"{path} has no conversations")
    return result


def assistant_spans(text: str, instruction_part: str, response_part: str) -> list[tuple[int, int]]:
    """Character spans trained on: after each response marker up to the next instruction marker (or the end).

    This is the rule of Unsloth's `train_on_responses_only`, so both backends learn from the same tokens:
    the assistant's words and the `<end_of_turn>\\n` that closes them.
    """
    spans = []
    for match in re.finditer(re.escape(response_part), text):
        start = match.end()
        nxt = text.find(instruction_part, start)
        spans.append((start, len(text) if nxt == -1 else nxt))
    return spans


def tokenize_with_mask(
    tokenizer: Any, text: str, instruction_part: str, response_part: str, max_length: int
) -> dict[str, Any]:
    """input_ids and labels (-100 outside assistant turns) for one templated conversation."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_spans(text, instruction_part, response_part)
    labels = []
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        inside = any(s <= start < e and end > start for s, e in spans)
        labels.append(token_id if inside else -100)
    ids = list(encoded["input_ids"])
    return {
        "input_ids": ids[:max_length],
        "labels": labels[:max_length],
        "truncated": len(ids) > max_length,
        "tokens": min(len(ids), max_length),
    }
