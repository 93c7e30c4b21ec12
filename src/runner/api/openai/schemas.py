"""OpenAI's request bodies: chat and text completions, embeddings (strict JSON types)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from runner.api.core.chat_plan import REASONING_FORMATS, ChatPlan, tool_error
from runner.api.core.prompt_cache import PromptCacheKey, PromptCacheRetention
from runner.api.core.schemas import (
    INT32_MAX,
    NOT_ZERO,
    STRICT,
    ChatMessage,
    GenerationFields,
    RequestBody,
    TokenId,
    check_limit,
    documented,
    model_field,
)
from runner.api.errors.table import APIError
from runner.chat.tools import ToolError, parse_tool_choice, parse_tools

MAX_EMBEDDING_INPUTS = 2048


class ChatCompletionRequest(GenerationFields):
    model_config = STRICT

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=-1, le=INT32_MAX, json_schema_extra=NOT_ZERO)
    # Checked by `chat.tools` (400 with param "tools" / "tool_choice").
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # llama-server's default: one call
    chat_template_kwargs: dict[str, Any] | None = None
    # llama-server's: "deepseek" (or "auto") splits <think> into reasoning_content, "none"
    # keeps it inline; unset: the model's `reasoning-format` setting.
    reasoning_format: str | None = None
    reasoning_budget: int | None = Field(None, ge=-1, le=INT32_MAX)  # thinking tokens
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # core/prompt_cache.py: slot affinity, and 24h pins of the whole prompt.
    prompt_cache_key: PromptCacheKey = None
    prompt_cache_retention: PromptCacheRetention = None

    @field_validator("max_completion_tokens")
    @classmethod
    def _limit2(cls, value: int | None) -> int | None:
        return check_limit(value)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def chat_plan(self) -> ChatPlan:
        """The tools and reasoning plan; 400 for bad tools or a forced call with a format."""
        try:
            tools = parse_tools(self.tools)
            choice = parse_tool_choice(self.tool_choice, tools)
        except ToolError as exc:
            raise tool_error(exc) from None
        constrained = self.response_format not in (None, {"type": "text"})
        if choice.forced and (constrained or self.grammar or self.json_schema is not None):
            raise APIError(
                400,
                "tool_choice 'required' or a named function cannot be combined with "
                "response_format, grammar or json_schema",
                "invalid_request_error",
                param="tool_choice",
            )
        if self.reasoning_format is not None and self.reasoning_format not in REASONING_FORMATS:
            raise APIError(
                400,
                f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}",
                "invalid_request_error",
                param="reasoning_format",
            )
        budget = -1 if self.reasoning_budget is None else self.reasoning_budget
        return ChatPlan(
            tools,
            choice,
            parallel=bool(self.parallel_tool_calls),
            reasoning_format=self.reasoning_format,
            reasoning_budget=budget,
        )

    def logprob_alternatives(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def token_limit(self) -> int | None:
        if self.max_completion_tokens is not None:
            return None if self.max_completion_tokens < 0 else self.max_completion_tokens
        return super().token_limit()


# One prompt: text, token ids, or a list holding one of either. The list lengths are
# documented here and checked by `_one_prompt` (with clearer messages than a union's).
Prompt = (
    str
    | Annotated[list[TokenId], documented(minItems=1)]
    | Annotated[list[str], documented(minItems=1, maxItems=1)]
    | Annotated[
        list[Annotated[list[TokenId], documented(minItems=1)]], documented(minItems=1, maxItems=1)
    ]
)


class CompletionRequest(GenerationFields):
    model_config = STRICT

    prompt: Prompt
    # Unsupported; documented as the only values accepted (checked in `_unsupported`).
    echo: bool | None = Field(False, json_schema_extra={"enum": [False, None]})
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})
    best_of: int | None = Field(None, json_schema_extra={"enum": [1, None]})
    logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Prompt) -> str | list[int]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("the prompt is empty")
        if isinstance(value[0], str | list):
            if len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            if isinstance(value[0], list) and not value[0]:
                raise ValueError("the prompt is empty")
            return value[0]  # type: ignore[return-value]
        return value  # type: ignore[return-value]

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return self

    def logprob_alternatives(self) -> int | None:
        return self.logprobs


# List lengths documented here, checked by `_inputs`.
EmbeddingInput = (
    str
    | Annotated[list[str], documented(minItems=1, maxItems=MAX_EMBEDDING_INPUTS)]
    | Annotated[list[TokenId], documented(minItems=1)]
    | Annotated[
        list[Annotated[list[TokenId], documented(minItems=1)]],
        documented(minItems=1, maxItems=MAX_EMBEDDING_INPUTS),
    ]
)


class EmbeddingRequest(RequestBody):
    model_config = STRICT

    model: str | None = model_field(None, blank_is_default=True)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(None, json_schema_extra={"type": "null"})  # unsupported

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        return value

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("dimensions is not supported (the model's size is used)")
        return value

    def items(self) -> list[str | list[int]]:
        """The inputs as a list: each a string or a token list."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]
