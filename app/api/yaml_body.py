"""Accept a YAML request body wherever a JSON one is declared, so the OpenAPI models stay the source of truth."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import yaml
from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.core.errors import InvalidInput

YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}


def yaml_to_json(raw: bytes) -> bytes:
    try:
        data = yaml.safe_load(raw.decode("utf-8")) if raw.strip() else None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(f"the YAML body does not parse{where}: {problem}", code="invalid_yaml") from None
    return json.dumps(data, default=str).encode()


class YAMLBodyRoute(APIRoute):
    """Turns a YAML body into JSON before FastAPI validates it against the declared model."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type in YAML_TYPES:
                body = yaml_to_json(await request.body())
                scope = dict(request.scope)
                scope["headers"] = [
                    (k, b"application/json" if k == b"content-type" else v) for k, v in request.scope["headers"]
                ]
                request = Request(scope, request.receive)
                request._body = body
            return await handler(request)

        return route_handler
