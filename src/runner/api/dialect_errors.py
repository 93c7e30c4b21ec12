"""Errors in each client dialect's own shape, rendered from `errors.describe`'s `ErrorInfo`.

`RENDERERS` claims the dialects' URL prefixes for `install_error_handlers`, so the one
exception handler and middleware errors (API key, Origin, Host, body limits, JSON guard)
answer in the shape the client of that path expects, with the same status:

* Ollama (`/api/...`): `{"error": "message"}`.
* Anthropic (`/v1/messages...`, `/anthropic/...`):
  `{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}`.

The Responses API keeps OpenAI's shape (the default). Streams that fail after their headers
went out render the same bodies as their own error events (`ollama_body`, `anthropic_body`),
as does `stream_failure` for the reasons a stream can end early.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, Response

from runner.engine import FinishEvent

from .errors import ErrorInfo, Renderer, describe
from .inference import finish_error
from .streaming import ShutdownCutoff

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
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_body(info: ErrorInfo) -> dict[str, Any]:
    error = {"type": anthropic_error_type(info.status), "message": info.message}
    return {"type": "error", "error": error}


def ollama_body(info: ErrorInfo) -> dict[str, Any]:
    return {"error": info.message}


def render_anthropic(info: ErrorInfo) -> Response:
    return JSONResponse(anthropic_body(info), status_code=info.status, headers=dict(info.headers))


def render_ollama(info: ErrorInfo) -> Response:
    return JSONResponse(ollama_body(info), status_code=info.status, headers=dict(info.headers))


RENDERERS: list[tuple[str, Renderer]] = [
    ("/api/", render_ollama),
    ("/v1/messages", render_anthropic),
    ("/anthropic/", render_anthropic),
]


def stream_failure(
    final: FinishEvent | None, cutoff: ShutdownCutoff | None = None
) -> tuple[bool, ErrorInfo | None]:
    """How a stream ended: (ended early, error to report). Early without an error means
    nobody is listening (client gone, engine going away): end quietly."""
    if cutoff is not None and cutoff.passed:
        message = (
            f"the server is shutting down; this stream ran past the {cutoff.grace:g} s "
            "shutdown grace and was ended before it finished"
        )
        return True, ErrorInfo(503, "server_shutting_down", message)
    if final is None or final.finish_reason == "cancelled":
        return True, None
    exc = finish_error(final)
    if exc is not None:
        return True, describe(exc)
    return False, None
