"""Tools and reasoning for a chat request, in any dialect: from the request's fields to the
prompt, the sampler's grammar, and the answer's ``tool_calls`` / ``reasoning_content``.

Each dialect builds the plan from its own fields (OpenAI's `ChatCompletionRequest.chat_plan`,
`dialect_common.chat_plan` for the others), 400 for bad tools; `render`
runs on the held model (its template knows the tool-call family); `customize` puts the tool
grammar and thinking budget on the engine request; `parser` makes the output parser that
both the streamed and the whole answer go through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.api.errors.table import APIError
from runner.chat import ChatTemplate, GrammarError
from runner.chat.output import ChatOutputParser, OutputDelta, parse_chat_output
from runner.chat.reasoning import ReasoningDelta, prompt_opens_thought
from runner.chat.toolcalls import ContentDelta, ToolCallDelta, ToolCallFormat
from runner.chat.tools import (
    ToolChoice,
    ToolError,
    ToolGrammar,
    ToolSpec,
    build_tool_grammar,
    render,
)
from runner.engine import GenerationRequest

REASONING_FORMATS = ("deepseek", "none", "auto")


def tool_error(exc: ToolError) -> APIError:
    code = "invalid_tool_choice" if exc.param == "tool_choice" else "invalid_tools"
    return APIError(400, str(exc), code, param=exc.param)


@dataclass
class ChatPlan:
    tools: list[ToolSpec]
    choice: ToolChoice
    parallel: bool = False
    reasoning_format: str | None = None  # the request's; None: the model's setting
    reasoning_budget: int = -1
    # set by `render`, on the held model
    fmt: ToolCallFormat | None = None
    grammar: ToolGrammar | None = None
    reasoning_open: bool = False
    split_reasoning: bool = True
    _parser: ChatOutputParser | None = field(default=None, repr=False)

    def render(
        self,
        template: ChatTemplate,
        messages: Sequence[Mapping[str, Any]],
        extra: Mapping[str, Any] | None,
        free_grammar: bool,
    ) -> str:
        """The prompt; `free_grammar` is False when the request has its own grammar."""
        fmt = template.tool_format
        try:
            text = render(template, messages, self.tools, fmt, extra=extra)
        except ToolError as exc:
            raise tool_error(exc) from None
        if self.choice.mode != "none" and self.tools:
            self.fmt = fmt
            try:
                grammar = build_tool_grammar(self.tools, self.choice, fmt, self.parallel)
            except GrammarError as exc:
                raise APIError(400, f"tools: {exc}", "invalid_tools", param="tools") from None
            if grammar is not None and (free_grammar or not grammar.lazy):
                self.grammar = grammar
        mode = self.reasoning_format or getattr(template, "reasoning_format", "deepseek")
        self.split_reasoning = mode != "none"
        self.reasoning_open = prompt_opens_thought(text)
        return text

    def customize(self, request: GenerationRequest) -> None:
        sampling = request.sampling
        if self.grammar is not None:
            sampling.grammar = self.grammar.gbnf
            sampling.grammar_lazy = self.grammar.lazy
            sampling.grammar_triggers = self.grammar.trigger_patterns
        sampling.reasoning_budget = self.reasoning_budget
        sampling.reasoning_open = self.reasoning_open
        if self.fmt is not None:
            # Some families mark calls with special tokens ([TOOL_CALLS], <|python_tag|>):
            # the parser must see them, and it keeps markup out of the content.
            request.render_special = True

    def parser(self) -> ChatOutputParser:
        forced = self.choice.forced and self.grammar is not None and not self.grammar.lazy
        return ChatOutputParser(self.fmt, self.split_reasoning, self.reasoning_open, forced)

    def message(self, text: str) -> tuple[dict[str, Any], bool]:
        """The non-streamed ``message`` and whether it holds tool calls."""
        answer = parse_chat_output(text, self.parser())
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.reasoning is not None:
            message["reasoning_content"] = answer.reasoning
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        return message, bool(answer.tool_calls)


def chat_deltas(deltas: list[OutputDelta]) -> list[dict[str, Any]]:
    """OpenAI ``delta`` objects for parser output (adjacent text pieces merged)."""
    out: list[dict[str, Any]] = []
    for delta in deltas:
        if isinstance(delta, ToolCallDelta):
            out.append({"tool_calls": [delta.to_openai()]})
            continue
        key = "reasoning_content" if isinstance(delta, ReasoningDelta) else "content"
        assert isinstance(delta, ContentDelta | ReasoningDelta)
        if out and set(out[-1]) == {key}:
            out[-1][key] += delta.text
        else:
            out.append({key: delta.text})
    return out


def chat_finish_reason(reason: str, output: ChatOutputParser | None) -> str:
    """OpenAI says ``tool_calls`` when an answer that ended normally holds calls."""
    if output is not None and output.n_calls and reason == "stop":
        return "tool_calls"
    return reason
