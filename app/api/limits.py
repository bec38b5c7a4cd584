"""Refuse request bodies over the configured size before any of it reaches a route."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """413 for a body over `max_bytes`: by Content-Length when given, else by counting while it arrives.

    Paths in `uploads` (exact) take up to their own, larger limit and must declare a Content-Length (411
    otherwise), so an upload is never held in memory to be measured.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        limit = self.uploads.get(scope["path"].rstrip("/"), self.max_bytes)
        if scope["path"].rstrip("/") in self.uploads and scope["method"] == "POST" and declared is None:
            await self._send(send, 411, "length_required", "send the upload with a Content-Length header")
            return
        if declared is not None:
            if not declared.isdigit() or int(declared) > limit:
                await self._refuse(send, limit)
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        # A chunked body: read it whole (bodies here are small configs), then hand it on.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, self.max_bytes)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, limit: int) -> None:
        setting = "FORGE_MAX_UPLOAD_BYTES" if limit != self.max_bytes else "FORGE_MAX_REQUEST_BYTES"
        await self._send(send, 413, "request_too_large", f"the request body is over the {limit}-byte limit ({setting})")

    async def _send(self, send: Send, status: int, code: str, message: str) -> None:
        body: dict[str, Any] = {"code": code, "message": message, "param": None}
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
