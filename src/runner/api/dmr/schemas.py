"""DMR management bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runner.api.core.schemas import MODEL_NAME_SCHEMA, model_field
from runner.config import KV_CACHE_TYPES

CacheTypeName = Literal[KV_CACHE_TYPES]  # type: ignore[valid-type]  # a tuple: its values

# ----- management bodies -------------------------------------------------------------------
# These routes read their JSON by hand (DMR's loose spellings, partial updates); the models
# below only document the bodies in /openapi.json (`openapi_extra` in dmr/routes.py).


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    all: bool = False
    backend: Literal["llama.cpp", ""] | None = None
    models: list[str] | str | None = Field(
        None,
        json_schema_extra={
            "anyOf": [
                {"type": "array", "items": {"type": "string", **MODEL_NAME_SCHEMA}},
                {"type": "string", **MODEL_NAME_SCHEMA},
                {"type": "null"},
            ]
        },
    )


class ConfigureRequest(BaseModel):
    """Per-model settings; None clears one. Numbers may also be sent as strings. A key not
    listed here is refused (400), never ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = model_field()
    context_size: int | str | None = Field(None, alias="context-size")
    slots: int | str | None = None
    similarity: float | str | None = None
    keep_alive: str | int | float | None = None
    gpu_layers: int | str | None = Field(None, alias="gpu-layers")
    chat_template: str | None = Field(None, alias="chat-template")
    runtime_flags: list[str] | str | None = Field(None, alias="runtime-flags")
    mode: Literal["completion", "embedding"] | None = None
    draft_max: int | str | None = Field(None, alias="draft-max")
    draft_model: str | None = Field(None, alias="draft-model")
    tool_format: str | None = Field(None, alias="tool-format")
    reasoning_format: Literal["deepseek", "none"] | None = Field(None, alias="reasoning-format")
    cache_type_k: CacheTypeName | None = Field(
        None, alias="cache-type-k", description="KV cache type of keys (llama-server's -ctk)"
    )
    lora: list[str] | str | None = Field(
        None, description="LoRA adapters, FILE[:SCALE] each (runtime flags --lora, --lora-scaled)"
    )
    cache_type_v: CacheTypeName | None = Field(
        None,
        alias="cache-type-v",
        description="KV cache type of values (-ctv; a quantized one turns on flash attention)",
    )


class CreateModelRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    from_: str = Field(
        alias="from",
        description="model to pull (ai/gemma3, registry/repo:tag, hf.co/ORG/REPO:QUANT, an "
        "https URL) or the absolute path of a local .gguf file",
    )
    sha256: str | None = Field(None, description="expected sha256 of a file pulled by URL")
    tag: str | None = Field(None, description="name to give it (default: from the file name)")
    name: str | None = Field(None, description="alias of tag")
