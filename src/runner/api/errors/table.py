"""How failures become HTTP errors: one table, rendered in each client dialect's shape.

Layers below the API (engine, loader, store, chat) raise plain exceptions that know nothing
about HTTP. `ERRORS` maps an exception class to a function building an `ErrorInfo` (status,
short code, message, extra headers such as `Retry-After`, the offending request field);
`describe(exc)` looks the exception's class up along its `__mro__`, the way Starlette's
exception middleware finds a handler, so a subclass without a row of its own inherits its
base's. Anything not in the table is a bug: logged with its traceback, reported as a 500.

Rendering is separate from describing. `openai_body(info)` gives OpenAI's
`{"error": {"message", "type", "code", "param"}}` (also the payload of an SSE error event);
another dialect renders the same `ErrorInfo` its own way, e.g. Ollama's `{"error": "..."}`
or Anthropic's `{"type": "error", "error": {"type", "message"}}`. A dialect claims its URL
prefixes with `install_error_handlers(app, renderers=[("/api/", render_ollama), ...])`; the one
exception handler, and middleware errors sent through `send_error` (`http/middleware.py`), pick
the renderer of the longest matching prefix, OpenAI's by default. Streams that fail after
their headers went out call `describe()` themselves and emit the dialect's error event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from runner.api.state import available_models, store_of
from runner.chat import ChatTemplateError, GrammarError
from runner.engine import (
    EngineClosed,
    EngineDead,
    EngineError,
    InvalidRequest,
    PromptTooLong,
    QueueFull,
)
from runner.engine.slot_files import (
    SlotFileInvalid,
    SlotFileMismatch,
    SlotFileNoSpace,
    SlotFileWriteFailed,
)
from runner.loader import InsufficientMemory, LoaderError, LoadFailed, ModelBusy
from runner.store.errors import (
    AmbiguousModelName,
    DigestMismatch,
    DiskFull,
    InvalidModelFile,
    InvalidModelName,
    ModelFileMissing,
    ModelNotFound,
    PullError,
    PullRefused,
    RemoteForbidden,
    RemoteNotFound,
    RemoteRateLimited,
    RemoteUnauthorized,
    RemoteUnreachable,
    StoreError,
    UnsupportedArtifact,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # queue-full clients should come back soon: slots free up per token


@dataclass(frozen=True)
class ErrorInfo:
    """A failure as any dialect reports it."""

    status: int
    code: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
    param: str | None = None


class APIError(Exception):
    """An error the API layer raises itself, reported as-is."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or error_type(status)
        self.headers = dict(headers or {})
        self.param = param


Describer = Callable[[Any], ErrorInfo]


def row(
    status: int, code: str, *, param: str | None = None, headers: Mapping[str, str] | None = None
) -> Describer:
    """A table row whose message is the exception's own (its code when it has none)."""

    def make(exc: BaseException) -> ErrorInfo:
        return ErrorInfo(status, code, str(exc) or code, dict(headers or {}), param)

    return make


def _api_error(exc: APIError) -> ErrorInfo:
    return ErrorInfo(exc.status, exc.code, exc.message, exc.headers, exc.param)


def _validation(exc: RequestValidationError) -> ErrorInfo:
    problems = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            message = f"the request body is not valid JSON: {ctx.get('error', err.get('msg'))}"
            return ErrorInfo(400, "invalid_request", message)
        where = ".".join(loc)
        problems.append(f"field '{where}': {err.get('msg')}" if where else str(err.get("msg")))
    message = "invalid request: " + "; ".join(problems) if problems else "invalid request"
    return ErrorInfo(400, "invalid_request", message)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _http(exc: StarletteHTTPException) -> ErrorInfo:
    status = exc.status_code
    if status == 400:  # FastAPI's "There was an error parsing the body"
        message = f"the request body could not be parsed: {exc.detail}"
    else:
        message = str(exc.detail)
    code = _HTTP_CODES.get(status) or error_type(status)
    return ErrorInfo(status, code, message, dict(exc.headers or {}))


# Exception class -> how to describe it. Order does not matter: lookup follows the MRO.
ERRORS: dict[type[BaseException], Describer] = {
    APIError: _api_error,
    RequestValidationError: _validation,
    StarletteHTTPException: _http,
    # engine
    EngineError: row(500, "engine_error"),
    PromptTooLong: row(400, "context_length_exceeded"),
    InvalidRequest: row(400, "invalid_request"),
    QueueFull: row(503, "server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}),
    EngineClosed: row(503, "model_unloaded"),
    EngineDead: row(503, "engine_failed", headers={"Retry-After": "1"}),
    SlotFileInvalid: row(400, "slot_file_invalid"),
    SlotFileMismatch: row(409, "slot_file_mismatch"),
    SlotFileWriteFailed: row(500, "slot_file_write_failed"),
    SlotFileNoSpace: row(507, "insufficient_storage"),
    # loader
    LoaderError: row(500, "loader_error"),
    InsufficientMemory: row(507, "insufficient_memory"),
    ModelBusy: row(409, "model_busy"),
    LoadFailed: row(500, "model_load_failed"),
    # store
    StoreError: row(500, "store_error"),
    ModelNotFound: row(404, "model_not_found", param="model"),
    AmbiguousModelName: row(400, "ambiguous_model_name", param="model"),
    InvalidModelName: row(400, "invalid_model_name", param="model"),
    ModelFileMissing: row(500, "model_file_error"),
    InvalidModelFile: row(500, "model_file_error"),
    # pulls (`from` names what to pull)
    PullError: row(502, "pull_failed", param="from"),
    RemoteUnreachable: row(503, "remote_unreachable", param="from"),
    RemoteNotFound: row(404, "remote_model_not_found", param="from"),
    RemoteUnauthorized: row(401, "remote_unauthorized", param="from"),
    RemoteForbidden: row(403, "remote_unauthorized", param="from"),
    PullRefused: row(403, "pull_address_refused", param="from"),
    RemoteRateLimited: row(429, "remote_rate_limited", param="from"),
    UnsupportedArtifact: row(400, "unsupported_artifact", param="from"),
    DigestMismatch: row(502, "digest_mismatch", param="from"),
    DiskFull: row(507, "disk_full", param="from"),
    # chat
    ChatTemplateError: row(400, "chat_template_error", param="messages"),
    GrammarError: row(400, "invalid_grammar", param="response_format"),
}


def describer_for(kind: type[BaseException]) -> Describer | None:
    """The table row for `kind` or its nearest base class; None if none has one."""
    for cls in kind.__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return None


def describe(exc: BaseException) -> ErrorInfo:
    """Any exception as an `ErrorInfo`; an unknown one is logged and becomes a 500."""
    make = describer_for(type(exc))
    if make is None:
        log.error("unexpected error", exc_info=exc)
        return ErrorInfo(500, "internal_error", f"internal server error: {type(exc).__name__}")
    info = make(exc)
    # Messages quote user input; a lone surrogate in it would make the response unencodable.
    return replace(info, message=info.message.encode("utf-8", "replace").decode("utf-8"))


def model_not_found(name: str, available: Sequence[str]) -> ErrorInfo:
    listed = ", ".join(available) if available else "none (add one with `runner models add`)"
    message = f"model {name!r} not found; available models: {listed}"
    return ErrorInfo(404, "model_not_found", message, param="model")


async def describe_request_error(request: Request, exc: BaseException) -> ErrorInfo:
    """`describe(exc)`, with the store's models listed when the model was not found."""
    if not isinstance(exc, ModelNotFound):
        return describe(exc)
    try:
        available = await available_models(store_of(request))
    except Exception:  # listing is a courtesy; never mask the original error
        available = []
    return model_not_found(exc.name, available)


# ----- rendering ---------------------------------------------------------------------------

Renderer = Callable[[ErrorInfo], Response]

# OpenAI's `type` for a status (llama-server uses the same names).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    501: "not_supported_error",
    503: "unavailable_error",
    507: "insufficient_storage_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_body(info: ErrorInfo) -> dict[str, Any]:
    """OpenAI's error object: the JSON body of an error response and of an SSE error event."""
    body: dict[str, Any] = {"message": info.message, "type": error_type(info.status)}
    body["code"] = info.code
    if info.param is not None:
        body["param"] = info.param
    return {"error": body}


def render_openai(info: ErrorInfo) -> Response:
    return JSONResponse(openai_body(info), status_code=info.status, headers=dict(info.headers))


def renderer_for(app: Any, path: str) -> Renderer:
    """The renderer of the dialect whose prefix is the longest match for `path`."""
    state = getattr(app, "state", None)  # None: middleware used without an app
    renderers: Sequence[tuple[str, Renderer]] = getattr(state, "error_renderers", ())
    best, best_len = render_openai, -1
    for prefix, render in renderers:
        if path.startswith(prefix) and len(prefix) > best_len:
            best, best_len = render, len(prefix)
    return best


def install_error_handlers(app: FastAPI, renderers: Sequence[tuple[str, Renderer]] = ()) -> None:
    """Register the one handler that describes any exception and renders it for its route;
    `renderers` are (URL prefix, renderer) pairs for the dialects that are not OpenAI's."""
    app.state.error_renderers = list(renderers)

    async def handle(request: Request, exc: Exception) -> Response:
        info = await describe_request_error(request, exc)
        return renderer_for(request.app, request.url.path)(info)

    # The table's classes are registered one by one so that Starlette's ExceptionMiddleware
    # (inside the user middleware) answers them; `Exception` goes to the outermost
    # ServerErrorMiddleware, which answers and then re-raises for the server's log.
    for kind in (*ERRORS, Exception):
        app.add_exception_handler(kind, handle)  # type: ignore[arg-type]
