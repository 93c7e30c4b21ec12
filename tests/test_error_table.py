"""The error table: exceptions from below the API map to status, code and headers by class
(nearest base class wins), and each dialect renders the same description its own way."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from runner.api.errors.table import (
    APIError,
    ErrorInfo,
    describe,
    install_error_handlers,
    openai_body,
)
from runner.api.http.middleware import BodyLimitMiddleware
from runner.chat import GrammarError
from runner.engine import EngineError, PromptTooLong, QueueFull
from runner.engine.slot_files import SlotFileNoSpace
from runner.loader import InsufficientMemory, LoaderError, ModelBusy
from runner.store import AmbiguousModelName, ModelNotFound, StoreError
from runner.store.errors import PullError, RemoteForbidden


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (PromptTooLong("too long"), 400, "context_length_exceeded"),
        (QueueFull("busy"), 503, "server_busy"),
        (EngineError("boom"), 500, "engine_error"),
        (InsufficientMemory("no room"), 507, "insufficient_memory"),
        (ModelBusy("in use"), 409, "model_busy"),
        (SlotFileNoSpace("disk full"), 507, "insufficient_storage"),
        (ModelNotFound("x"), 404, "model_not_found"),
        (RemoteForbidden("no rights"), 403, "remote_unauthorized"),
        (PullError("remote answered 500"), 502, "pull_failed"),
        (AmbiguousModelName("x", ["a", "b"]), 400, "ambiguous_model_name"),
        (GrammarError("bad"), 400, "invalid_grammar"),
        (APIError(418, "teapot", "teapot"), 418, "teapot"),
    ],
)
def test_known_exceptions_map_by_class(exc: Exception, status: int, code: str) -> None:
    info = describe(exc)
    assert (info.status, info.code) == (status, code)
    assert info.message == str(exc)


def test_subclasses_inherit_their_base_row() -> None:
    class NewEngineProblem(EngineError):
        pass

    class NewLoaderProblem(LoaderError):
        pass

    class NewStoreProblem(StoreError):
        pass

    assert describe(NewEngineProblem("x")).status == 500
    assert describe(NewLoaderProblem("x")).code == "loader_error"
    assert describe(NewStoreProblem("x")).code == "store_error"


def test_queue_full_asks_clients_to_retry() -> None:
    assert describe(QueueFull()).headers == {"Retry-After": "1"}
    assert describe(QueueFull()).message == "server_busy"  # no message: the code stands in


def test_nothing_below_the_api_carries_an_http_status() -> None:
    for exc in (QueueFull(), PromptTooLong(), InsufficientMemory(), ModelBusy()):
        assert not hasattr(exc, "status")


def test_unknown_exceptions_are_internal_errors() -> None:
    info = describe(KeyError("x"))
    assert (info.status, info.code) == (500, "internal_error")
    assert "KeyError" in info.message


def _render_bare(info: ErrorInfo) -> JSONResponse:
    """A dialect with Ollama's shape, to show a second renderer of the same table."""
    return JSONResponse({"error": info.message}, info.status, dict(info.headers))


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, renderers=[("/api/", _render_bare)])

    @app.get("/v1/busy")
    @app.get("/api/busy")
    async def busy() -> None:
        raise QueueFull("every slot is busy")

    @app.post("/api/echo")
    async def echo() -> None:
        return None

    return app


async def _get(app: object, method: str, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_each_dialect_renders_the_same_description() -> None:
    app = _app()
    openai = await _get(app, "GET", "/v1/busy")
    bare = await _get(app, "GET", "/api/busy")
    assert openai.status_code == bare.status_code == 503
    assert openai.headers["retry-after"] == bare.headers["retry-after"] == "1"
    assert openai.json() == openai_body(describe(QueueFull("every slot is busy")))
    assert openai.json()["error"]["type"] == "unavailable_error"
    assert bare.json() == {"error": "every slot is busy"}


@pytest.mark.anyio
async def test_middleware_errors_use_the_dialect_of_the_path() -> None:
    app = _app()
    app.add_middleware(BodyLimitMiddleware, max_bytes=10)
    big = json.dumps({"x": "y" * 100})
    bare = await _get(app, "POST", "/api/echo", content=big)
    assert bare.status_code == 413 and "larger than the limit" in bare.json()["error"]
    openai = await _get(app, "POST", "/v1/echo", content=big)
    assert openai.status_code == 413 and openai.json()["error"]["code"] == "request_too_large"
