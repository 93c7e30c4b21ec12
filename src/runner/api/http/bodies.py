"""JSON request bodies parsed off the event loop once they are large.

FastAPI parses and validates a body on the event loop; for a few MB (say 100k chat messages)
that is over a second in which no other request, stream or `/health` is answered. Past
`OFFLOAD_BYTES`, `loads` and the `parsed(Model)` dependency do the JSON parsing and the
pydantic validation on a worker thread instead. Errors are FastAPI's own
`RequestValidationError`, so they render exactly like those of an inline-parsed body (400).

A thread alone is not enough: one C call (pydantic validating 100k messages) holds the GIL
from start to end, and the event loop waits for it as if it ran there. So a long list of
models (`messages`) is validated in chunks of `CHUNK` items, and the GIL changes hands
between them; the model is then built from the validated items, which pydantic passes through.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, get_args, get_origin

import anyio
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

OFFLOAD_BYTES = 64 * 1024
CHUNK = 512

M = TypeVar("M", bound=BaseModel)


async def off_loop_if_large(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, on a worker thread when the input is larger than `OFFLOAD_BYTES`."""
    if size <= OFFLOAD_BYTES:
        return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


async def loads(raw: bytes) -> Any:
    """`json.loads(raw)`, off the event loop for a large `raw`."""
    return await off_loop_if_large(len(raw), json.loads, raw)


def _validate(model: type[M], raw: bytes) -> M:
    if not raw.strip():
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        data = json.loads(raw)
    except ValueError as exc:
        pos = getattr(exc, "pos", 0)
        error = {"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error",
                 "input": {}, "ctx": {"error": getattr(exc, "msg", str(exc))}}  # fmt: skip
        raise RequestValidationError([error]) from None
    try:
        if isinstance(data, dict):
            data = _validate_long_lists(model, data)
        return model.model_validate(data)
    except _ItemErrors as exc:
        raise RequestValidationError(exc.errors) from None
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


class _ItemErrors(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors


@functools.cache
def _chunk_adapter(model: type[BaseModel], field: str) -> TypeAdapter[Any] | None:
    """A validator for a slice of `model.field` when the field is `list[SomeModel]`."""
    annotation = model.model_fields[field].annotation
    args = get_args(annotation)
    item = args[0] if get_origin(annotation) is list and len(args) == 1 else None
    if isinstance(item, type) and issubclass(item, BaseModel):
        return TypeAdapter(list[item])  # type: ignore[valid-type]
    return None


def _validate_long_lists(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each long `list[SomeModel]` field validated chunk by chunk."""
    out = data
    for field in model.model_fields:
        items = data.get(field)
        if not isinstance(items, list) or len(items) <= CHUNK:
            continue
        adapter = _chunk_adapter(model, field)
        if adapter is None:
            continue
        checked: list[Any] = []
        for start in range(0, len(items), CHUNK):
            try:
                checked += adapter.validate_python(items[start : start + CHUNK])
            except ValidationError as exc:
                raise _ItemErrors(
                    [{**e, "loc": ("body", field, start + e["loc"][0], *e["loc"][1:])}
                     for e in exc.errors(include_url=False)]
                ) from None  # fmt: skip
        out = {**out, field: checked}
    return out


def parsed(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency that reads the body as `model` (declare the body in the route's OpenAPI
    with `schemas.json_body(model)`, since FastAPI no longer sees it as a parameter)."""

    async def dependency(request: Request) -> M:
        raw = await request.body()
        return await off_loop_if_large(len(raw), _validate, model, raw)

    return dependency
