"""Reading one JSONL row in any of the formats users bring, into the spec's ShareGPT turns.

- `sharegpt`: {"conversations": [{"role": "user", "content": ...}, ...]} (the spec's format)
- `sharegpt-from-value`: {"conversations": [{"from": "human", "value": ...}, ...]} (human/gpt/system)
- `openai`: {"messages": [{"role": "user", "content": ...}, ...]} (content may be a list of text parts)
- `alpaca`: {"instruction", "input", "output"}, the Data Factory's training-data format, converted exactly as the
  spec's `convert_to_sharegpt`: instruction -> system turn, input -> user turn, output -> assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMATS = ("sharegpt", "sharegpt-from-value", "openai", "alpaca")
ROLES = ("system", "user", "assistant")
FROM_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}

Turn = dict[str, str]


class RowProblem(ValueError):
    """One thing wrong with a row: the field at fault (dotted, as in the file) and a stable code."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass
class Converted:
    turns: list[Turn]
    # Where each turn came from in the row (e.g. "conversations[2]" or "input"), for error messages.
    sources: list[str]


def detect(row: Any) -> str | None:
    """The format a parsed row is in, judged by its keys; None when it is none of them."""
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("conversations"), list):
        first = next((turn for turn in row["conversations"] if isinstance(turn, dict)), {})
        return "sharegpt-from-value" if "from" in first or "value" in first else "sharegpt"
    if isinstance(row.get("messages"), list):
        return "openai"
    if "output" in row or "instruction" in row:
        return "alpaca"
    return None


def _expected_shape(fmt: str) -> str:
    return {
        "sharegpt": 'an object with a "conversations" list of {"role", "content"} turns',
        "sharegpt-from-value": 'an object with a "conversations" list of {"from", "value"} turns',
        "openai": 'an object with a "messages" list of {"role", "content"} messages',
        "alpaca": 'an object with "instruction", "input" and "output" strings',
    }[fmt]


def _text(value: Any, field: str) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RowProblem(
                    "unsupported_content", f"only text parts are supported; part {i} is {part!r:.60}", f"{field}[{i}]"
                )
            parts.append(part["text"])
        value = "".join(parts)
    if value is None:
        raise RowProblem("missing_field", "is missing", field)
    if not isinstance(value, str):
        raise RowProblem("content_not_string", f"must be a string, not {type(value).__name__}", field)
    if not value.strip():
        raise RowProblem("empty_content", "is empty", field)
    return value


def _turns(row: dict[str, Any], key: str, role_key: str, text_key: str, roles: dict[str, str]) -> Converted:
    items = row[key]
    if not items:
        raise RowProblem("empty_conversation", "has no turns", key)
    turns, sources = [], []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise RowProblem("turn_not_object", f"must be an object with {role_key!r} and {text_key!r}", where)
        role = item.get(role_key)
        if role not in roles:
            allowed = ", ".join(sorted(roles))
            raise RowProblem("unknown_role", f"is {role!r}; expected one of {allowed}", f"{where}.{role_key}")
        turns.append({"role": roles[role], "content": _text(item.get(text_key), f"{where}.{text_key}")})
        sources.append(where)
    return Converted(turns, sources)


def _alpaca(row: dict[str, Any]) -> Converted:
    for key in ("instruction", "input"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise RowProblem("content_not_string", f"must be a string, not {type(row[key]).__name__}", key)
    turns, sources = [], []
    # The spec's convert_to_sharegpt, step by step: a present (truthy) field becomes a turn.
    if row.get("instruction"):
        turns.append({"role": "system", "content": _text(row["instruction"], "instruction")})
        sources.append("instruction")
    if row.get("input"):
        turns.append({"role": "user", "content": _text(row["input"], "input")})
        sources.append("input")
    if "input" not in sources:
        raise RowProblem(
            "no_user_turn",
            "is empty: the spec's conversion makes `instruction` the system prompt and `input` the user's "
            "message, so this row would have no user turn; put the user's message in `input`",
            "input",
        )
    turns.append({"role": "assistant", "content": _text(row.get("output"), "output")})
    sources.append("output")
    return Converted(turns, sources)


def convert(row: Any, fmt: str) -> Converted:
    """The row as spec ShareGPT turns; raises RowProblem naming the field at fault."""
    if not isinstance(row, dict):
        raise RowProblem("not_object", f"is a JSON {type(row).__name__}; expected {_expected_shape(fmt)}")
    found = detect(row)
    sharegpt = {"sharegpt", "sharegpt-from-value"}
    if found in sharegpt and fmt in sharegpt and not any(isinstance(t, dict) for t in row["conversations"]):
        found = fmt  # no turn to tell the two apart by
    if found != fmt:
        looks = f"looks like {found}" if found else "has none of the expected keys"
        raise RowProblem("wrong_format", f"{looks}; expected {_expected_shape(fmt)} ({fmt})")
    if fmt == "sharegpt":
        return _turns(row, "conversations", "role", "content", {r: r for r in ROLES})
    if fmt == "sharegpt-from-value":
        return _turns(row, "conversations", "from", "value", FROM_ROLES)
    if fmt == "openai":
        return _turns(row, "messages", "role", "content", {r: r for r in ROLES})
    return _alpaca(row)


def check_order(converted: Converted) -> None:
    """An optional system turn, then user and assistant alternating, ending with an answer."""
    turns, sources = converted.turns, converted.sources
    body_start = 1 if turns[0]["role"] == "system" else 0
    expected = "user"
    for i in range(body_start, len(turns)):
        role = turns[i]["role"]
        if role == "system":
            raise RowProblem("roles_out_of_order", "is a system turn; only the first turn may be one", sources[i])
        if role != expected:
            previous = turns[i - 1]["role"] if i > body_start else None
            why = f"follows a {previous} turn" if previous else "opens the conversation (after any system turn)"
            raise RowProblem(
                "roles_out_of_order",
                f"is a {role} turn that {why}; turns must alternate user, assistant, user, ...",
                sources[i],
            )
        expected = "assistant" if role == "user" else "user"
    if len(turns) == body_start:
        raise RowProblem("no_assistant_turn", "has only a system turn; add a user turn and an answer", sources[0])
    if turns[-1]["role"] != "assistant":
        if not any(t["role"] == "assistant" for t in turns):
            raise RowProblem("no_assistant_turn", "has no assistant turn to learn from", sources[-1])
        raise RowProblem(
            "ends_without_answer", "is a user turn with no answer after it; end with the assistant", sources[-1]
        )
