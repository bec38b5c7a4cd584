"""Go's text/template, the part a Modelfile's TEMPLATE uses, to render it in a test as Ollama would: text and
actions with `{{-`/`-}}` trimming; `range $i, $_ := ...`, `if`/`else if`/`else`/`end`, `$x := ...`; fields of
`.` and `$`, variables, string and integer literals, parentheses; eq, ne, lt, le, and, or, not, len, slice.
Anything else raises, so a template using more than this cannot pass a test by accident."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TERM = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+')


@dataclass
class _Range:
    head: str
    body: list[Any]


@dataclass
class _If:
    condition: str
    body: list[Any]
    orelse: list[Any]


def _segments(template: str) -> Iterator[tuple[bool, str]]:
    """(is_action, text) in order, the text beside a trim marker stripped of its whitespace."""
    pos, trim_next = 0, False
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        text = text.lstrip() if trim_next else text
        yield False, text.rstrip() if match.group(1) else text
        yield True, match.group(2).strip()
        pos, trim_next = match.end(), bool(match.group(3))
    yield False, template[pos:].lstrip() if trim_next else template[pos:]


def _parse_list(segments: Iterator[tuple[bool, str]]) -> tuple[list[Any], str | None]:
    """Nodes up to the `else...` or `end` that closes them (returned with them; None at the template's end)."""
    nodes: list[Any] = []
    for is_action, text in segments:
        if not is_action:
            nodes.append(text)
        elif text.startswith("range "):
            body, closing = _parse_list(segments)
            assert closing == "end", f"range closed by {closing!r}"
            nodes.append(_Range(text.removeprefix("range "), body))
        elif text.startswith("if "):
            nodes.append(_parse_if(text.removeprefix("if "), segments))
        elif text == "end" or text.startswith("else"):
            return nodes, text
        else:
            nodes.append(("action", text))
    return nodes, None


def _parse_if(condition: str, segments: Iterator[tuple[bool, str]]) -> _If:
    body, closing = _parse_list(segments)
    if closing == "end":
        return _If(condition, body, [])
    if closing == "else":
        orelse, end = _parse_list(segments)
        assert end == "end", f"else closed by {end!r}"
        return _If(condition, body, orelse)
    assert closing is not None and closing.startswith("else if "), f"if closed by {closing!r}"
    return _If(condition, body, [_parse_if(closing.removeprefix("else if "), segments)])


def _truthy(value: Any) -> bool:
    return bool(value)  # Go: false, 0, "", nil and empty collections are false


FUNCTIONS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "and": lambda *xs: next((x for x in xs if not _truthy(x)), xs[-1]),
    "or": lambda *xs: next((x for x in xs if _truthy(x)), xs[-1]),
    "not": lambda x: not _truthy(x),
    "len": len,
    "slice": lambda xs, start=0, stop=None: xs[start:stop],
}


class _Scope:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.variables: dict[str, Any] = {"$": root}

    def operand(self, term: str, dot: Any) -> Any:
        if term.startswith('"'):
            return json.loads(term)
        if re.fullmatch(r"-?\d+", term):
            return int(term)
        if term.startswith("$."):
            return self.root[term[2:]]
        if term.startswith("$"):
            return self.variables[term]
        if term.startswith("."):
            return dot[term[1:]]
        raise ValueError(f"not in the supported subset: {term!r}")

    def evaluate(self, expression: str, dot: Any) -> Any:
        terms = _TERM.findall(expression)
        value, rest = self._command(terms, dot)
        assert not rest, f"unparsed {rest} in {expression!r}"
        return value

    def _command(self, terms: list[str], dot: Any) -> tuple[Any, list[str]]:
        args: list[Any] = []
        name = terms[0] if terms[0] in FUNCTIONS else None
        terms = terms[1:] if name else terms
        while terms and terms[0] != ")":
            if terms[0] == "(":
                value, terms = self._command(terms[1:], dot)
                assert terms[:1] == [")"], "unclosed ("
                terms = terms[1:]
                args.append(value)
            else:
                args.append(self.operand(terms[0], dot))
                terms = terms[1:]
        if name:
            return FUNCTIONS[name](*args), terms
        assert len(args) == 1, f"a value, not {args}"
        return args[0], terms


def _run(nodes: list[Any], scope: _Scope, dot: Any, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _If):
            _run(node.body if _truthy(scope.evaluate(node.condition, dot)) else node.orelse, scope, dot, out)
        elif isinstance(node, _Range):
            names, _, expression = node.head.rpartition(":=")
            index_name, _, item_name = (n.strip() for n in names.partition(","))
            for i, item in enumerate(scope.evaluate(expression, dot)):
                if index_name:
                    scope.variables[index_name], scope.variables[item_name] = i, item
                _run(node.body, scope, item, out)
        else:
            action = node[1]
            if re.match(r"\$\w+ :?= ", action):
                variable, _, expression = action.partition("=")
                scope.variables[variable.rstrip(" :")] = scope.evaluate(expression, dot)
            else:
                value = scope.evaluate(action, dot)
                out.append("" if value is None else str(value))


def render(template: str, data: dict[str, Any]) -> str:
    """The template executed on `data` (Ollama's: System, Messages of {Role, Content}, ...)."""
    nodes, closing = _parse_list(_segments(template))
    assert closing is None, f"unmatched {{{{ {closing} }}}}"
    out: list[str] = []
    _run(nodes, _Scope(data), data, out)
    return "".join(out)
