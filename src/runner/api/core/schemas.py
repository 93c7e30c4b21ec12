"""Request fields every dialect shares: OpenAI's field names plus llama-server's extras
(`GenerationFields`, which each dialect fills from its own), model names, `json_body`.

Sampling fields default to None and fall back to `SamplingParams`' defaults, which are
llama-server's (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05) rather than OpenAI's
(temperature 1, top_p 1): the seed's users expect llama-server behaviour, and small local
models ramble at temperature 1. Explicit nulls mean "default", as OpenAI clients send them.

Unknown fields are ignored (clients send `user`, `store`, `metadata`...). Type errors become
400 `invalid_request_error` through the handler in `errors/table.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 1024  # characters per stop string
INT32_MAX = (1 << 31) - 1
_TOKEN_ID = re.compile(r"^\s*[0-9]{1,10}\s*$")  # ASCII digits only: int() takes more


# Model names as `store.names.parse` accepts them (`[host[:port]/][org/]repo[:tag]`, any case,
# spaces around ignored; also `sha256:<hex>` ids), for /openapi.json only: the store stays the
# judge, and answers a name outside this with `invalid_model_name` (tests/test_fuzz.py checks
# that every name matching it parses).
_COMPONENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_NAME = rf"{_COMPONENT}(?::[0-9]{{1,5}})?(?:/{_COMPONENT})+(?::{_TAG})?|{_COMPONENT}(?::{_TAG})?"
MODEL_NAME_SCHEMA: dict[str, Any] = {"pattern": rf"^\s*(?:{_NAME})\s*$", "maxLength": 256}
# OpenAI-style routes read an empty (or blank) `model` as "the default model".
MODEL_OR_DEFAULT_SCHEMA: dict[str, Any] = {"pattern": rf"^\s*(?:{_NAME})?\s*$", "maxLength": 256}
# A token id: the vocabulary's size bounds it too, which only the loaded model knows.
TokenId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]


# `?model=` and `/models/{name}`: documented with the name pattern; the store judges them.
# (an empty `?model=` is no model given)
_MODEL_QUERY = {**MODEL_NAME_SCHEMA, "pattern": rf"^(?:\s*(?:{_NAME})\s*)?$"}
ModelQuery = Annotated[str | None, Query(json_schema_extra=_MODEL_QUERY)]
# (a path segment holds no line breaks, so no spaces around the name there)
ModelPath = Annotated[
    str, Path(json_schema_extra={**MODEL_NAME_SCHEMA, "pattern": f"^(?:{_NAME})$"})
]


def documented(**schema: Any) -> Any:
    """A constraint stated in /openapi.json only, for one a validator checks with its own
    message."""
    return Field(json_schema_extra=schema)


def model_field(default: Any = ..., blank_is_default: bool = False, **kwargs: Any) -> Any:
    """A `model` field documented with the model-name pattern."""
    extra = MODEL_OR_DEFAULT_SCHEMA if blank_is_default else MODEL_NAME_SCHEMA
    return Field(default, json_schema_extra=extra, **kwargs)


# Token limits are -1 (none) or at least 1: the documents say 0 is refused (`check_limit`).
NOT_ZERO: dict[str, Any] = {"not": {"const": 0}}


def check_limit(value: int | None) -> int | None:
    if value is not None and value != -1 and value < 1:
        raise ValueError("must be at least 1 (or -1 for no limit)")
    return value


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


# Request bodies as the HTTP routes parse them: JSON types exactly as /openapi.json documents
# them (no "1" for 1, 1.0 for 1 or 0 for false). Dialects build `GenerationFields` from their
# own values and keep the lax base.
STRICT = ConfigDict(extra="ignore", strict=True)


class ChatMessage(BaseModel):
    """One message; extra keys (tool_calls, name...) pass through to the chat template."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(RequestBody):
    include_usage: bool = False


_STOP = {"type": "string", "maxLength": MAX_STOP_LENGTH}
_STOP_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _STOP,
        {"type": "array", "items": _STOP, "maxItems": MAX_STOP_STRINGS},
        {"type": "null"},
    ]
}
_LOGIT_BIAS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "propertyNames": {"pattern": _TOKEN_ID.pattern},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        },
        {"type": "null"},
    ]
}


# As the engine's bound (engine/lora.py): a scale this large already swamps the weights.
MAX_LORA_SCALE = 100.0


class LoraScale(RequestBody):
    """One adapter of llama-server's per-request `lora`: its id (GET /lora-adapters) and
    scale; adapters not listed get scale 0."""

    id: StrictInt = Field(ge=0, le=INT32_MAX)
    scale: float = Field(ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE, allow_inf_nan=False)


# Adapter entries one request may list (a model loads at most 16; ids may repeat).
MAX_LORA_ENTRIES = 64


class GenerationFields(RequestBody):
    """What chat and text completions share: model, sampling, limits, streaming."""

    model: str | None = model_field(None, blank_is_default=True)
    # Ranges: OpenAI's where it defines them; C-int fields fit an int32 (ctypes would
    # silently wrap larger values); every float must be finite.
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 64) - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    repeat_penalty: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    repeat_last_n: int | None = Field(None, ge=-1, le=INT32_MAX)  # the engine caps it at ctx
    # Keys are token ids (which must also be in the vocabulary), values -100..100.
    logit_bias: dict[str, float] | None = Field(None, json_schema_extra=_LOGIT_BIAS_SCHEMA)
    # Also checked against the slot's context by the engine (400 when larger).
    max_tokens: int | None = Field(None, ge=-1, le=INT32_MAX, json_schema_extra=NOT_ZERO)
    # llama-server's max_tokens
    n_predict: int | None = Field(None, ge=-1, le=INT32_MAX, json_schema_extra=NOT_ZERO)
    # Choices share one prompt computation; the engine caps n at its slot count.
    n: int | None = Field(1, ge=1, le=128)
    stop: str | list[str] | None = Field(None, json_schema_extra=_STOP_SCHEMA)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # llama-server extras
    cache_prompt: bool | None = True
    id_slot: int | None = Field(-1, ge=-1, le=INT32_MAX)
    # n_keep is accepted and ignored: runner never shifts the context.
    n_keep: int | None = Field(None, ge=-1, le=INT32_MAX)
    n_probs: int | None = Field(0, json_schema_extra={"maximum": 0, "minimum": 0})  # unsupported
    ignore_eos: bool | None = False
    grammar: str | None = None
    json_schema: dict[str, Any] | bool | None = None
    response_format: dict[str, Any] | None = None
    lora: list[LoraScale] | None = Field(None, max_length=MAX_LORA_ENTRIES)

    @field_validator("max_tokens", "n_predict")
    @classmethod
    def _limit(cls, value: int | None) -> int | None:
        return check_limit(value)

    @field_validator("n_probs")
    @classmethod
    def _no_probs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError("token probabilities (n_probs) are not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        stops = [value] if isinstance(value, str) else value or []
        if any(len(stop) > MAX_STOP_LENGTH for stop in stops):
            raise ValueError(f"stop strings may be at most {MAX_STOP_LENGTH} characters long")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not _TOKEN_ID.match(key):
                raise ValueError(f"keys must be token ids, got {key[:32]!r}")
            if not -100 <= bias <= 100:  # also false for NaN
                raise ValueError(f"bias for token {key} must be between -100 and 100")
        return value

    @property
    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def token_bias(self) -> dict[int, float]:
        return {int(k): v for k, v in (self.logit_bias or {}).items()}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def logprob_alternatives(self) -> int | None:
        """How many alternatives to report per token; None: no log-probabilities."""
        return None

    def token_limit(self) -> int | None:
        """max_tokens as the engine wants it: None runs to the end of the slot's context."""
        value = self.max_tokens if self.max_tokens is not None else self.n_predict
        return None if value is None or value < 0 else value


COMPONENT_REF = "#/components/schemas/{model}"


def json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as a route's JSON request body. Nested models refer
    to `#/components/schemas/...`; `openapi.correct` moves the schema's `$defs` there (a
    `#/$defs/...` reference would point into the OpenAPI document's root, where none are)."""
    schema = model.model_json_schema(by_alias=True, ref_template=COMPONENT_REF)
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }
    }
