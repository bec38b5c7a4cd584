"""The one input-hardening layer for request bodies: every route of the API is a `YAMLBodyRoute`.

Before a route sees its body: the token is checked (an unauthenticated client never gets its body parsed), a
YAML body is parsed into the JSON the declared model validates (so the OpenAPI models stay the source of truth),
and a JSON or YAML body is parsed off the event loop and refused when it is nested too deeply, expands past
FORGE_MAX_REQUEST_BYTES through YAML aliases ("billion laughs"), or holds text that is not Unicode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import yaml
from fastapi import Request, Response, params
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.api.deps import check_token, require_token
from app.core.config import Settings
from app.core.errors import InvalidInput, TooLarge

YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
# A training config is 3 levels deep; nothing any route takes comes near this.
MAX_DEPTH = 64
# Values a YAML body may hold, aliases expanded; a full config has about 150. Parsing costs ~25 us a value.
MAX_NODES = 20_000
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Loader(yaml.SafeLoader):
    """SafeLoader with a depth limit, and dates left as the strings they are written as (no field is a date, and
    a date key could not become JSON)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # The scanner keeps a possible key per open bracket and walks them all at every token: `[[[[...` costs
        # quadratic time, so it is stopped at the bracket that passes the limit, before the composer sees it.
        super().fetch_flow_collection_start(token_class)  # type: ignore[misc]
        if self.flow_level > MAX_DEPTH:
            raise InvalidInput(
                f"the YAML body is nested deeper than {MAX_DEPTH} levels (line {self.line + 1})", code="too_deep"
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # The composer recurses once per level: stop long before Python's recursion limit does.
        self.depth += 1
        self.nodes += 1
        try:
            if self.nodes > MAX_NODES:
                raise TooLarge(f"the YAML body has more than {MAX_NODES} values; send a training config")
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise InvalidInput(
                    f"the YAML body is nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})",
                    code="too_deep",
                )
            return super().compose_node(parent, index)  # type: ignore[return-value]
        finally:
            self.depth -= 1


def _expanded_size(root: Node, max_bytes: int) -> None:
    """Refuse a node graph whose aliases expand past MAX_NODES nodes or about `max_bytes` of JSON, before
    anything is expanded: each distinct node is sized once, and an alias costs its target's size again."""
    sizes: dict[int, tuple[int, int]] = {}
    visiting: set[int] = set()

    def size(node: Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise InvalidInput("a YAML alias refers to the node that contains it", code="invalid_yaml")
        visiting.add(key)
        nodes, length = 1, 2
        if isinstance(node, ScalarNode):
            length = len(node.value) + 2
        elif isinstance(node, SequenceNode):
            for item in node.value:
                n, b = size(item)
                nodes, length = nodes + n, length + b + 1
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                (kn, kb), (vn, vb) = size(k), size(v)
                nodes, length = nodes + kn + vn, length + kb + vb + 2
        visiting.discard(key)
        if nodes > MAX_NODES or length > max_bytes:
            raise TooLarge(
                f"the YAML body expands (through its aliases) past {MAX_NODES} values or the {max_bytes}-byte "
                "limit (FORGE_MAX_REQUEST_BYTES); write it without the repeated aliases"
            )
        sizes[key] = (nodes, length)
        return sizes[key]

    size(root)


def _checked(data: Any, what: str) -> Any:
    """`data`, after a walk (no recursion) that refuses deep nesting and text with unpaired surrogates."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"the {what} body is nested deeper than {MAX_DEPTH} levels", code="too_deep")
        if isinstance(value, str) and _SURROGATE.search(value):
            where = where.encode("utf-8", "backslashreplace").decode("utf-8")  # the answer must be UTF-8 itself
            raise InvalidInput(
                f"the {what} body has text that is not Unicode (an unpaired surrogate \\ud800-\\udfff) at "
                f"{where or 'the top'}; send UTF-8 text",
                code="invalid_text",
                param=where or None,
            )
        if isinstance(value, dict):
            stack.extend((k, depth + 1, where) for k in value)
            stack.extend((v, depth + 1, f"{where}.{k}".lstrip(".")) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value))
    return data


def parse_yaml(raw: bytes, max_bytes: int) -> Any:
    """A YAML body as JSON data; 422 when it does not parse, 413 when it expands past `max_bytes`."""
    try:
        loader = _Loader(raw.decode("utf-8"))
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            _expanded_size(root, max_bytes)
            data = loader.construct_document(root)
        finally:
            loader.dispose()
        text = json.dumps(data, default=str, allow_nan=True)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(f"the YAML body does not parse{where}: {problem}", code="invalid_yaml") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise InvalidInput(f"the YAML body cannot be read as JSON data: {exc}", code="invalid_yaml") from None
    if len(text) > max_bytes:
        raise TooLarge(f"the YAML body expands to {len(text)} bytes of JSON, over FORGE_MAX_REQUEST_BYTES={max_bytes}")
    return _checked(json.loads(text), "YAML")


def parse_json(raw: bytes) -> Any:
    """A JSON body, checked; None when it does not parse (FastAPI then answers its usual 422 or 400)."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise InvalidInput(f"the JSON body is nested deeper than {MAX_DEPTH} levels", code="too_deep") from None
    except ValueError:
        return None
    return _checked(data, "JSON")


class YAMLBodyRoute(APIRoute):
    """Authenticates, then parses a JSON or YAML body off the event loop, before FastAPI validates it against the
    declared model."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        body = self.body_field
        model = getattr(body.field_info.annotation, "__name__", None) if body is not None else None
        if body is not None and model and not isinstance(body.field_info, params.Form):
            # Every JSON body may be sent as YAML: say so on the OpenAPI page (and to the fuzz), with the same schema.
            schema = {"$ref": f"#/components/schemas/{model}"}
            extra = {"requestBody": {"content": {"application/yaml": {"schema": schema}}}}
            self.openapi_extra = {**extra, **(self.openapi_extra or {})}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_token = any(dep.dependency is require_token for dep in self.dependencies)

        async def route_handler(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            if needs_token:
                check_token(settings, request.headers.get("authorization"))
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            is_yaml = content_type in YAML_TYPES
            if is_yaml or content_type == "application/json":
                raw = await request.body()
                if not raw.strip():
                    return await handler(request)
                if is_yaml:
                    data = await run_in_threadpool(parse_yaml, raw, settings.max_request_bytes)
                else:
                    data = await run_in_threadpool(parse_json, raw)
                    if data is None:
                        return await handler(request)
                scope = dict(request.scope)
                scope["headers"] = [
                    (k, b"application/json" if k == b"content-type" else v) for k, v in request.scope["headers"]
                ]
                request = Request(scope, request.receive)
                request._body = raw
                request._json = data  # FastAPI reads the parsed body from here: it is not parsed again
            return await handler(request)

        return route_handler
