"""Errors in each client dialect's own shape.

Everything in runner reports errors in OpenAI's shape (`{"error": {"message", "type",
"code"}}`): route handlers, the exception handlers in `errors.py`, and the middleware that
refuses a request before any route runs (API key, Origin, Host, body limits, JSON guard).
`DialectErrorMiddleware`, outermost, rewrites such a JSON error body into the shape the
client of that path expects, keeping the status:

* Ollama (`/api/...`): `{"error": "message"}`.
* Anthropic (`/v1/messages...`, `/anthropic/...`):
  `{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}`.

The OpenAI Responses API uses OpenAI's shape already. Streamed errors (after a 200 started)
are rendered by each dialect's stream itself with `ollama_error` / `anthropic_error`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ANTHROPIC_PREFIXES = ("/v1/messages", "/anthropic/")
OLLAMA_PREFIX = "/api/"

# Anthropic's error types by HTTP status (their API reference, "Errors").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    507: "api_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


def ollama_error(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


Shaper = Callable[[int, str], dict[str, Any]]


def shaper_for(path: str) -> Shaper | None:
    """The error shape for requests to `path`, None for OpenAI's own."""
    if path.startswith(OLLAMA_PREFIX):
        return ollama_error
    if path.startswith(ANTHROPIC_PREFIXES):
        return anthropic_error
    return None


def _message_of(body: bytes) -> str | None:
    """The message of an OpenAI-shaped error body, None if the body is something else."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):  # already Ollama-shaped
        return error
    return None


class DialectErrorMiddleware:
    """Reshape JSON error responses on dialect paths (see module doc). Only error responses
    are buffered (they are small); everything else streams through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shape = shaper_for(scope.get("path", "")) if scope["type"] == "http" else None
        if shape is None:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def reshaping_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] >= 400 and is_json:
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                await self._send_reshaped(send, start, b"".join(chunks), shape)
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)

    @staticmethod
    async def _send_reshaped(send: Send, start: Message, body: bytes, shape: Shaper) -> None:
        message = _message_of(body)
        if message is not None:
            body = json.dumps(shape(start["status"], message)).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
