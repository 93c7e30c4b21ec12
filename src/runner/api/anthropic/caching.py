"""Anthropic's prompt caching: `cache_control` breakpoints on tools, system blocks and message
blocks become pins of the prompt's prefix, and `usage` reports what was written and read.

A breakpoint is the prompt up to the end of its block as the chat template renders it. Where
that is depends on the template, so the request is rendered once more with a unique marker
after each marked block's text (for a tool: after its description, the last text of a tool
that the client writes): the marker's place in the text, tokenized, is the breakpoint, and
the prefix kept is the longest run of the real prompt's tokens that the text before the
marker tokenizes to (a token merged across the block's end stays outside). Should a
template alter the markers, the request keeps only the breakpoints found.

Blocks that carry no text of their own (`tool_use`, images) cannot hold a breakpoint here;
Anthropic's other rules (at most 4 breakpoints, `type: ephemeral`, `ttl` of `5m` or `1h`)
are checked, each a 400 in Anthropic's error shape.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.api.core.inference import INLINE_LIMIT, PromptBuilder
from runner.api.errors.table import APIError
from runner.chat.tools import render
from runner.engine import Engine, FinishEvent, GenerationRequest
from runner.engine.slots import common_prefix_length
from runner.engine.types import CacheBreakpoint
from runner.loader import ResidentModel

MAX_BREAKPOINTS = 4
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_TEXT_BLOCKS = ("text", "tool_result")


@dataclass
class Breakpoints:
    """The request's breakpoints: TTL labels in request order, and (once the prompt is
    built) where each one ends in it."""

    labels: list[str] = field(default_factory=list)
    found: list[CacheBreakpoint | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def customize(self, then: Callable[[GenerationRequest], None] | None) -> Callable[..., None]:
        """The engine request's customizer: `then` (the chat plan's), plus the pins."""

        def apply(request: GenerationRequest) -> None:
            if then is not None:
                then(request)
            request.breakpoints = tuple(b for b in self.found if b is not None)

        return apply

    def usage(self, final: FinishEvent) -> dict[str, Any]:
        """Anthropic's `usage`: tokens read from the cache, written at breakpoints (per TTL),
        and the rest of the prompt as `input_tokens`, adding up to the prompt."""
        written = iter(final.timings.cache_written)
        per_ttl = {"5m": 0, "1h": 0}
        for label, where in zip(self.labels, self.found, strict=True):
            if where is not None:
                per_ttl[label] += next(written, 0)
        created = sum(per_ttl.values())
        read = final.timings.cache_n
        return {
            "input_tokens": final.prompt_tokens - read - created,
            "output_tokens": final.completion_tokens,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": per_ttl["5m"],
                "ephemeral_1h_input_tokens": per_ttl["1h"],
            },
        }


def ttl_of(control: Any, where: str, default: float) -> tuple[str, float]:
    """The TTL a `cache_control` asks for, as Anthropic names it and in seconds (one that
    names none: "5m", lasting `default`, the `cache_pin_ttl` setting); 400 if malformed."""
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        raise APIError(400, f"{where}.cache_control: type must be 'ephemeral'", "invalid_request")
    if "ttl" not in control:
        return "5m", default
    ttl = control["ttl"]
    if ttl not in TTL_SECONDS:
        raise APIError(400, f"{where}.cache_control.ttl must be '5m' or '1h'", "invalid_request")
    return str(ttl), TTL_SECONDS[ttl]


def mark(body: Any, default_ttl: float) -> tuple[Any, list[str], Breakpoints]:
    """A copy of `body` (a Messages request) with a unique marker after each block that has
    `cache_control`; returns it, the markers and their breakpoints (not yet located)."""
    marked = body.model_copy(deep=True)
    markers: list[str] = []
    points = Breakpoints()
    salt = secrets.token_hex(6)

    def add(where: str, control: Any) -> str:
        label, seconds = ttl_of(control, where, default_ttl)
        points.labels.append(label)
        points.seconds.append(seconds)
        points.found.append(None)
        markers.append(f"zq{salt}bp{len(markers)}qz")
        if len(markers) > MAX_BREAKPOINTS:
            raise APIError(
                400,
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided",
                "invalid_request",
            )
        return markers[-1]

    for i, tool in enumerate(marked.tools or []):
        if isinstance(tool, dict) and "cache_control" in tool:
            tool["description"] = str(tool.get("description") or "") + add(
                f"tools.{i}", tool["cache_control"]
            )
    if isinstance(marked.system, list):
        for i, block in enumerate(marked.system):
            if isinstance(block, dict) and "cache_control" in block:
                _append(block, add(f"system.{i}", block["cache_control"]), f"system.{i}")
    for m, message in enumerate(marked.messages):
        if isinstance(message.content, str):
            continue
        for i, block in enumerate(message.content):
            if isinstance(block, dict) and "cache_control" in block:
                where = f"messages.{m}.content.{i}"
                _append(block, add(where, block["cache_control"]), where)
    return marked, markers, points


def _append(block: dict[str, Any], marker: str, where: str) -> None:
    if block.get("type") == "text" and isinstance(block.get("text"), str):
        block["text"] += marker
    elif block.get("type") == "tool_result":
        content = block.get("content")
        if isinstance(content, str) or content is None:
            block["content"] = (content or "") + marker
        elif isinstance(content, list) and content and isinstance(content[-1], dict):
            last = content[-1]
            if last.get("type") == "text" and isinstance(last.get("text"), str):
                last["text"] += marker
    # Other blocks (tool_use, images) hold no text to mark: no breakpoint there.


def locate(text: str, markers: Sequence[str]) -> tuple[str, list[int | None]]:
    """`text` without the markers, and each marker's offset in it (None: not found)."""
    hits = sorted((at, i) for i, m in enumerate(markers) if (at := text.find(m)) >= 0)
    offsets: list[int | None] = [None] * len(markers)
    clean, last, removed = [], 0, 0
    for at, i in hits:
        if at < last:  # markers overlapping: a template that mangles text
            continue
        clean.append(text[last:at])
        offsets[i] = at - removed
        last = at + len(markers[i])
        removed += len(markers[i])
    clean.append(text[last:])
    return "".join(clean), offsets


def with_breakpoints(
    builder: PromptBuilder,
    marked_messages: list[dict[str, Any]],
    marked_tools: Any,
    markers: list[str],
    points: Breakpoints,
) -> PromptBuilder:
    """`builder` (the request's own prompt), also finding where each breakpoint ends in it
    from a render of the marked request (into `points`)."""
    if not markers:
        return builder

    def find(model: ResidentModel, engine: Engine, tokens: list[int]) -> None:
        template = model.template
        if template is None:
            return
        text = render(template, marked_messages, marked_tools, template.tool_format)
        clean, offsets = locate(text, markers)
        for i, at in enumerate(offsets):
            if at is None:
                continue
            head = engine.tokenize(clean[:at], add_special=True, parse_special=True)
            end = common_prefix_length(head, tokens)
            points.found[i] = CacheBreakpoint(end, points.seconds[i]) if end > 0 else None

    async def prompt_of(model: ResidentModel, engine: Engine) -> tuple[list[int], Sequence[str]]:
        tokens, stops = await builder(model, engine)
        if len(tokens) > INLINE_LIMIT // 4:
            await asyncio.to_thread(find, model, engine, tokens)
        else:
            find(model, engine, tokens)
        return tokens, stops

    return prompt_of
