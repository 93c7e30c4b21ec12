"""OpenAI-shaped errors: `{"error": {"message", "type", "code"}}` with the right HTTP status.

Every failure path ends here: our own `APIError`, FastAPI's request validation (which would
otherwise be a 422 with FastAPI's body), Starlette's HTTP errors (404 route, 405...), engine
and loader errors (they carry `.status` and `.code`), store lookups and template/grammar
problems. Types follow llama-server (`invalid_request_error`, `not_found_error`...); codes are
short strings like OpenAI's (`model_not_found`, `context_length_exceeded`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runner.chat import ChatTemplateError, GrammarError
from runner.engine import EngineError, QueueFull
from runner.loader import InsufficientMemory, LoadFailed, ModelBusy
from runner.store import (
    AmbiguousModelName,
    InvalidModelFile,
    InvalidModelName,
    ModelFileMissing,
    ModelNotFound,
    StoreError,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # queue-full clients should come back soon: slots free up per token

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


class APIError(Exception):
    """An error to report as-is: HTTP `status`, OpenAI `code`, optional extra headers."""

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


def error_body(status: int, message: str, code: str | None = None, param: str | None = None):
    """The JSON body of an error response (also used for SSE error events)."""
    # Messages quote user input; a lone surrogate in it would make the response unencodable.
    message = message.encode("utf-8", "replace").decode("utf-8")
    body: dict[str, Any] = {
        "message": message,
        "type": error_type(status),
        "code": code or error_type(status),
    }
    if param is not None:
        body["param"] = param
    return {"error": body}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message, exc.code, exc.param),
        status_code=exc.status,
        headers=exc.headers or None,
    )


def model_not_found(name: str, available: Sequence[str]) -> APIError:
    listed = ", ".join(available) if available else "none (add one with `runner models add`)"
    return APIError(
        404,
        f"model {name!r} not found; available models: {listed}",
        "model_not_found",
        param="model",
    )


def to_api_error(exc: BaseException, available: Sequence[str] = ()) -> APIError | None:
    """Translate a known library exception; None for anything unexpected (a bug: 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return APIError(exc.status, str(exc), exc.code, headers)
    if isinstance(exc, EngineError):
        return APIError(exc.status, str(exc) or exc.code, exc.code)
    if isinstance(exc, ModelNotFound):
        return model_not_found(exc.name, available)
    if isinstance(exc, AmbiguousModelName):
        return APIError(400, str(exc), "ambiguous_model_name", param="model")
    if isinstance(exc, InvalidModelName):
        return APIError(400, str(exc), "invalid_model_name", param="model")
    if isinstance(exc, ModelFileMissing | InvalidModelFile):
        return APIError(500, str(exc), "model_file_error")
    if isinstance(exc, StoreError):
        return APIError(500, str(exc), "store_error")
    if isinstance(exc, ChatTemplateError):
        return APIError(400, str(exc), "chat_template_error", param="messages")
    if isinstance(exc, GrammarError):
        return APIError(400, str(exc), "invalid_grammar", param="response_format")
    status = getattr(exc, "status", None)  # loader errors: InsufficientMemory 507, ModelBusy 409
    if isinstance(status, int) and 400 <= status < 600:
        return APIError(status, str(exc), getattr(exc, "code", None))
    return None


def _available_models(request: Request) -> list[str]:
    store = getattr(request.app.state, "store", None)
    if store is None:
        return []
    try:
        return [tag for entry in store.list() for tag in entry.tags]
    except Exception:  # listing is a courtesy; never mask the original error
        return []


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return f"the request body is not valid JSON: {ctx.get('error', err.get('msg'))}"
        where = ".".join(loc)
        problems.append(f"field '{where}': {err.get('msg')}" if where else str(err.get("msg")))
    return "invalid request: " + "; ".join(problems) if problems else "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the OpenAI shape."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(APIError(400, _describe_validation(exc), "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "There was an error parsing the body"
            message = f"the request body could not be parsed: {exc.detail}"
        else:
            message = str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        err = APIError(exc.status_code, message, code.get(exc.status_code), exc.headers)
        return error_response(err)

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        err = to_api_error(
            exc, _available_models(request) if isinstance(exc, ModelNotFound) else ()
        )
        if err is None:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            err = APIError(500, f"internal server error: {type(exc).__name__}", "internal_error")
        return error_response(err)

    # Registered separately so Starlette's ExceptionMiddleware (inside user middleware)
    # handles them, rather than the outermost ServerErrorMiddleware that re-raises.
    handled = (APIError, EngineError, StoreError, ChatTemplateError, GrammarError)
    for kind in (*handled, InsufficientMemory, LoadFailed, ModelBusy):
        app.add_exception_handler(kind, _any)  # type: ignore[arg-type]
