"""A chat answer as the API reports it: reasoning, content and tool calls, streamed or whole.

`ChatOutputParser` chains the reasoning splitter (`reasoning.py`) and the tool-call parser
(`toolcalls`): the thought is never searched for tool calls, the answer is. Dialects map its
deltas to their own shapes; `parse_chat_output` gives the non-streamed result, built from
the same deltas so both agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .reasoning import ReasoningDelta, ReasoningSplitter
from .toolcalls import ContentDelta, StreamingToolParser, ToolCallDelta, ToolCallFormat
from .toolcalls.stream import collect_deltas

OutputDelta = ContentDelta | ReasoningDelta | ToolCallDelta


@dataclass
class ChatOutputParser:
    """`feed` generated text, `finish` once; both return `OutputDelta`s in order.

    `fmt` None means no tool parsing (no tools, or ``tool_choice: none``); `split_reasoning`
    False leaves ``<think>`` inline in the content.
    """

    fmt: ToolCallFormat | None = None
    split_reasoning: bool = True
    reasoning_open: bool = False
    calls_forced: bool = False  # the output is tool calls only (a forced call's grammar)
    _reasoning: ReasoningSplitter | None = field(default=None, init=False)
    _tools: StreamingToolParser | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.split_reasoning:
            self._reasoning = ReasoningSplitter(self.reasoning_open)
        if self.fmt is not None:
            self._tools = StreamingToolParser(self.fmt, calls_forced=self.calls_forced)

    @property
    def n_calls(self) -> int:
        return self._tools.n_calls if self._tools is not None else 0

    @property
    def cut_calls(self) -> frozenset[int]:
        """Indexes of calls the end of the output cut (known after `finish`)."""
        return frozenset(self._tools.cut_calls) if self._tools is not None else frozenset()

    def feed(self, text: str) -> list[OutputDelta]:
        pieces = self._reasoning.feed(text) if self._reasoning else [("content", text)]
        return self._route(pieces)

    def finish(self) -> list[OutputDelta]:
        out = self._route(self._reasoning.finish()) if self._reasoning else []
        if self._tools is not None:
            out.extend(self._tools.finish())
        return out

    def _route(self, pieces: list[tuple[str, str]]) -> list[OutputDelta]:
        out: list[OutputDelta] = []
        for kind, text in pieces:
            if kind == "reasoning":
                out.append(ReasoningDelta(text))
            elif self._tools is not None:
                out.extend(self._tools.feed(text))
            else:
                out.append(ContentDelta(text))
        return out


@dataclass(frozen=True)
class ChatAnswer:
    content: str | None
    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    cut_calls: frozenset[int] = frozenset()  # indexes in `tool_calls` cut by the output's end


def parse_chat_output(text: str, parser: ChatOutputParser) -> ChatAnswer:
    deltas = parser.feed(text) + parser.finish()
    reasoning = "".join(d.text for d in deltas if isinstance(d, ReasoningDelta))
    rest = [d for d in deltas if not isinstance(d, ReasoningDelta)]
    parsed = collect_deltas(rest)  # type: ignore[arg-type]
    content = parsed.content
    if content is None and not parsed.tool_calls:
        content = ""
    return ChatAnswer(content, reasoning or None, parsed.tool_calls, parser.cut_calls)
