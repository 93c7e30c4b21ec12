"""A true /openapi.json: what the routes really answer, so clients and fuzzers can trust it.

FastAPI documents a 422 with its own validation body on every route with parameters, but
runner answers validation errors with 400 in OpenAI's error shape (`errors/table.py`), and any
route can answer another 4xx/5xx (auth, origin, body size, busy, model missing...). So every
operation documents `4XX` and `5XX` with the error schema instead of the 422. Routes whose
success is not JSON say so: `/metrics` is Prometheus text, generations may stream as
server-sent events, `/models/create` streams progress lines, and `_configure` answers 202.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from runner.api.errors.renderers import ANTHROPIC, OLLAMA, dialect_for

_OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "integer", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
_OLLAMA_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_ANTHROPIC_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
# Error shapes by path prefix (as `errors.renderers.RENDERERS` renders them); else OpenAI's.
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _OPENAI_ERROR,
    "OllamaError": _OLLAMA_ERROR,
    "AnthropicError": _ANTHROPIC_ERROR,
}
_ERROR_SCHEMA = {OLLAMA: "OllamaError", ANTHROPIC: "AnthropicError"}  # by the route's dialect
_TEXT = {"schema": {"type": "string"}}
# POST routes that stream when asked: Ollama's as JSON lines, the others as SSE.
_STREAMS = (
    ("/api/chat", "application/x-ndjson"),
    ("/api/generate", "application/x-ndjson"),
    ("/api/pull", "application/x-ndjson"),
    ("/chat/completions", "text/event-stream"),
    ("/completions", "text/event-stream"),
    ("/messages", "text/event-stream"),
    ("/responses", "text/event-stream"),
)

# (method, path suffix) -> the success responses that replace FastAPI's JSON 200.
_SUCCESS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/metrics"): {
        "200": {"description": "Prometheus text format", "content": {"text/plain": _TEXT}}
    },
    ("post", "/models/create"): {
        "200": {
            "description": "Progress lines, then a success or error line",
            "content": {"text/plain": _TEXT, "application/x-ndjson": _TEXT},
        }
    },
    ("post", "/_configure"): {
        "202": {
            "description": "Saved; applied at the model's next load",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
}


def true_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` return the corrected document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = correct(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def correct(schema: dict[str, Any]) -> dict[str, Any]:
    """Apply the corrections described in the module docstring to a generated document."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(ERROR_SCHEMAS)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            _hoist_definitions(operation, components)
        name = _ERROR_SCHEMA.get(dialect_for(path), "Error")
        error = {
            "description": "Error",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for key, success in _SUCCESS.items():
                if method == key[0] and path.endswith(key[1]):
                    responses.pop("200", None)
                    responses.update(success)
            stream_type = _stream_type(method, path)
            if stream_type and "200" in responses:
                # Each event is one of the dialect's chunk objects (or an error event).
                responses["200"].setdefault("content", {})[stream_type] = {"schema": {}}
            for status in ("4XX", "5XX"):
                responses.setdefault(status, error)
    return schema


def _hoist_definitions(operation: dict[str, Any], components: dict[str, Any]) -> None:
    """Move the `$defs` of a request body declared by `schemas.json_body` into the document's
    components, where its references (`#/components/schemas/Name`) point."""
    content = operation.get("requestBody", {}).get("content", {})
    for media in content.values():
        for name, definition in media.get("schema", {}).pop("$defs", {}).items():
            known = components.setdefault(name, definition)
            if known != definition:  # two different models of one name: fix the names
                raise ValueError(f"two request body schemas are both named {name!r}")


def _stream_type(method: str, path: str) -> str | None:
    """The media type of the route's streamed answer (`"stream": true`), if it streams."""
    if method != "post":
        return None
    return next((kind for suffix, kind in _STREAMS if path.endswith(suffix)), None)
