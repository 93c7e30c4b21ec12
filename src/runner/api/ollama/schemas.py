"""Ollama request bodies, for /openapi.json only: the routes read their JSON by hand (Ollama's
loose spellings: `model` or `name`, durations as strings or numbers) and check it there."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runner.api.core.schemas import (
    INT32_MAX,
    MAX_STOP_STRINGS,
    NOT_ZERO,
    TokenId,
    model_field,
)
from runner.api.errors.table import APIError

# Durations `parse_keep_alive` reads (a subset: Go's `1h30m` spellings are also taken).
KEEP_ALIVE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^(?:\s*-?[0-9]+(?:\.[0-9]+)?\s*(?:[mM][sS]|[sSmMhHdD])?\s*)?$",
        },
        {"type": "number"},
        {"type": "null"},
    ]
}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class OllamaOptions(_Loose):
    """Also `num_ctx` (64-1048576): the context per slot the model is loaded with; another
    size than the configured one loads the model again with it."""

    # The ranges are the chat route's (`GenerationFields`), which these options become.
    num_predict: int | None = Field(
        None,
        le=INT32_MAX,
        description="max tokens; any negative value: no limit",
        json_schema_extra=NOT_ZERO,
    )
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 64) - 1)
    stop: list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
    repeat_penalty: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    repeat_last_n: int | None = Field(None, ge=-1, le=INT32_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)


class _Generation(_Loose):
    model: str = model_field()
    options: OllamaOptions | None = None
    format: str | dict[str, Any] | None = Field(None, description='"json" or a JSON schema')
    stream: bool = True
    keep_alive: str | float | None = Field(
        None,
        description="5m, 1h30m, seconds; 0 unloads after the request, -1 never",
        json_schema_extra=KEEP_ALIVE_SCHEMA,
    )
    think: bool | Literal["low", "medium", "high"] | None = Field(
        None,
        description="reason first (`thinking` in the answer); given to the chat template as "
        "`enable_thinking`; true for a model whose template does not think is a 400",
    )


class OllamaMessage(_Loose):
    role: str = Field(description="system, user, assistant or tool")
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class OllamaChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(_Generation):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    # An earlier answer's `context`, to continue from (ids within the model's vocabulary).
    context: list[TokenId] | None = None


class OllamaEmbedRequest(_Loose):
    model: str = model_field()
    input: str | list[str] = Field(
        json_schema_extra={
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        }
    )
    truncate: bool = True
    keep_alive: str | float | None = Field(None, json_schema_extra=KEEP_ALIVE_SCHEMA)


class OllamaEmbeddingsRequest(_Loose):
    model: str = model_field()
    prompt: str
    keep_alive: str | float | None = Field(None, json_schema_extra=KEEP_ALIVE_SCHEMA)


class OllamaModelRequest(_Loose):
    model: str = model_field(description="a model name (older clients send `name`)")


class OllamaPullRequest(OllamaModelRequest):
    stream: bool = True


class OllamaCopyRequest(_Loose):
    source: str = model_field()
    destination: str = model_field()


def requested_model(body: dict[str, Any]) -> str:
    """The body's `model` (or its older spelling `name`), stripped; 400 if missing."""
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise APIError(400, "model is required", "invalid_request")
    return name.strip()
