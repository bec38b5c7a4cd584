"""Errors with a code, a message a user can act on and the field at fault; mapped to HTTP once, in app.main."""

from __future__ import annotations

from typing import Any


class ForgeError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message, "param": self.param}
        if self.details is not None:
            body["details"] = self.details
        return body


class NotFound(ForgeError):
    status_code = 404
    code = "not_found"


class Conflict(ForgeError):
    status_code = 409
    code = "conflict"


class TooLarge(ForgeError):
    status_code = 413
    code = "request_too_large"


class InvalidInput(ForgeError):
    status_code = 422
    code = "invalid_input"


class Unauthorized(ForgeError):
    status_code = 401
    code = "unauthorized"
