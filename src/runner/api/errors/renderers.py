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

`DIALECTS` is the one table of prefixes; `RENDERERS` (the app's responses) and, for code
that speaks raw ASGI without runner's app (the cluster front door), `error_response` and
`stream_error_event` (the bytes of an error event in an already started stream) derive
from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response
from sse_starlette import ServerSentEvent

from runner.api.core.inference import finish_error
from runner.api.core.sse import ShutdownCutoff
from runner.api.errors.table import ErrorInfo, Renderer, describe, openai_body
from runner.engine import FinishEvent

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


@dataclass(frozen=True)
class Dialect:
    body: Callable[[ErrorInfo], dict[str, Any]]
    sse_event: str | None = None  # the `event:` name of an SSE error event (Anthropic's)

    def render(self, info: ErrorInfo) -> Response:
        return JSONResponse(self.body(info), status_code=info.status, headers=dict(info.headers))


OPENAI = Dialect(openai_body)
OLLAMA = Dialect(ollama_body)
ANTHROPIC = Dialect(anthropic_body, sse_event="error")

# URL prefix -> dialect; the longest matching prefix wins, OpenAI's when none does.
DIALECTS: list[tuple[str, Dialect]] = [
    ("/api/", OLLAMA),
    ("/v1/messages", ANTHROPIC),
    ("/anthropic/", ANTHROPIC),
]
render_anthropic = ANTHROPIC.render
render_ollama = OLLAMA.render
RENDERERS: list[tuple[str, Renderer]] = [(prefix, d.render) for prefix, d in DIALECTS]

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def dialect_for(path: str) -> Dialect:
    best, best_len = OPENAI, -1
    for prefix, dialect in DIALECTS:
        if path.startswith(prefix) and len(prefix) > best_len:
            best, best_len = dialect, len(prefix)
    return best


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def error_response(path: str, info: ErrorInfo) -> tuple[int, bytes]:
    """(status, JSON body) of the error response the client of `path` expects."""
    return info.status, _json(dialect_for(path).body(info)).encode()


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_stream(content_type: str) -> bool:
    """An answer of this content type is a stream that can carry its own error event."""
    return _media(content_type) in (SSE, NDJSON)


def stream_error_event(path: str, content_type: str, info: ErrorInfo) -> bytes | None:
    """The last event of a stream of `content_type` that failed after its headers went
    out, as the streams of `path`'s dialect end themselves (`openai/streaming.py`,
    `anthropic/stream.py`, `ollama/stream.py`, `responses/output.py`); None if the content type is no stream."""
    dialect = dialect_for(path)
    media = _media(content_type)
    if media == SSE:
        return ServerSentEvent(data=_json(dialect.body(info)), event=dialect.sse_event).encode()
    if media == NDJSON:
        return (_json(dialect.body(info)) + "\n").encode()
    return None


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
