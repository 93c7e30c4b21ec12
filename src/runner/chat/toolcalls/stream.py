"""Incremental tool-call parser: model output text in, content and tool-call deltas out.

`StreamingToolParser.feed` takes text in whatever pieces the engine produces (tokens split
markers and JSON anywhere) and returns what can be said for sure so far:

- `ContentDelta` for plain text. Text that might be the start of a marker is held back until
  the next piece settles it, so no markup ever reaches the content.
- `ToolCallDelta` in OpenAI's streaming shape: the first delta of a call carries its `index`,
  `id` and `name`; later ones carry fragments of `arguments`. The fragments concatenate to the
  call's arguments exactly as the model wrote them (a JSON text), so a streamed call and the
  same answer parsed whole (`parse_tool_calls`, which runs this parser) are identical.

A call's arguments are streamed from the raw JSON as it arrives, with a small JSON scanner
that tracks strings, escapes and nesting, so it needs no complete document. Whitespace
between calls is dropped; text that turns out not to be a call (a bare JSON object whose
first key is not ``name``/``type``, junk inside a call section) is given back as content.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .base import ARGUMENT_KEYS, ToolCallFormat

_SEPARATORS = " \t\r\n,;"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_ARGS_MARK = "[ARGS]"
_CALL_FIRST_KEYS = frozenset({"name", "type"})


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One piece of a streamed call; `id`/`name` only on a call's first delta."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The ``delta.tool_calls[]`` item OpenAI streams for this piece."""
        if self.name is not None:
            function = {"name": self.name, "arguments": self.arguments}
            return {"index": self.index, "id": self.id, "type": "function", "function": function}
        return {"index": self.index, "function": {"arguments": self.arguments}}


Delta = ContentDelta | ToolCallDelta


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)


def _held_prefix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper prefix of a marker."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best


class _CallScanner:
    """Scans one call as raw JSON. With `name` given (Mistral's ``name[ARGS]{...}``) the whole
    object is the arguments; otherwise the object's ``name`` and arguments keys are read."""

    def __init__(self, name: str | None = None) -> None:
        self.raw = ""
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.args_only = name is not None
        self.name = name
        self.first_key: str | None = None
        self.key: str | None = None
        self.expect = "value" if self.args_only else "open"
        self.value_start = 0 if self.args_only else -1
        self.value_kind = ""  # "string", "container" or "scalar"
        self.args_key: str | None = None
        self.args_start = 0 if self.args_only else -1
        self.args_end = -1
        self.string_args: str | None = None  # arguments the model wrote as a JSON string
        self.done = False
        self._string_start = -1

    def feed(self, text: str) -> int:
        """Consume `text` up to the end of the object; returns how many characters it took."""
        for i, char in enumerate(text):
            self.raw += char
            self._char(char)
            if self.done:
                return i + 1
        return len(text)

    def _char(self, char: str) -> None:
        pos = len(self.raw) - 1
        if self.in_string:
            if self.escape:
                self.escape = False
            elif char == "\\":
                self.escape = True
            elif char == '"':
                self.in_string = False
                if self.depth == 1 or (self.args_only and self.depth == 0):
                    self._string_done(self.raw[self._string_start : pos + 1], pos)
            return
        if self.expect == "value" and self.depth == (0 if self.args_only else 1):
            if char in " \t\r\n":
                return
            self.value_start = pos
            self.value_kind = "string" if char == '"' else "container" if char in "{[" else "scalar"
            if self.key in ARGUMENT_KEYS and self.args_key is None:
                self.args_key = self.key
                self.args_start = pos
            self.expect = "in_value"
        if char == '"':
            self.in_string = True
            self._string_start = pos
        elif char in "{[":
            self.depth += 1
            if self.expect == "open":
                self.expect = "key"
        elif char in "}]":
            self.depth -= 1
            if self.value_kind == "container" and self.depth == (0 if self.args_only else 1):
                self._value_done(pos + 1)
            if self.depth <= 0:
                if self.value_kind == "scalar" and self.expect == "in_value":
                    self._value_done(pos)
                self.done = True
        elif self.depth == 1 and not self.args_only:
            if char == ":" and self.expect == "colon":
                self.expect = "value"
            elif char == ",":
                if self.value_kind == "scalar" and self.expect == "in_value":
                    self._value_done(pos)
                self.expect = "key"

    def _string_done(self, literal: str, pos: int) -> None:
        if self.expect == "key" and not self.args_only:
            try:
                self.key = json.loads(literal)
            except ValueError:
                self.key = ""
            if self.first_key is None:
                self.first_key = self.key
            self.expect = "colon"
        elif self.expect == "in_value" and self.value_kind == "string":
            self._value_done(pos + 1)

    def _value_done(self, end: int) -> None:
        text = self.raw[self.value_start : end]
        if self.args_only or (self.key == self.args_key and self.args_end < 0):
            self.args_end = end
            if self.value_kind == "string":
                try:
                    decoded = json.loads(text)
                except ValueError:
                    decoded = text
                self.string_args = decoded if isinstance(decoded, str) else text
        elif self.key == "name" and self.value_kind == "string" and self.name is None:
            try:
                name = json.loads(text)
            except ValueError:
                name = None
            self.name = name if isinstance(name, str) and name else None
        self.expect = "after"
        self.value_kind = ""

    def arguments_so_far(self, final: bool) -> str:
        """The arguments text that is certain now (all of it once the value has ended)."""
        if self.args_start < 0:
            return ""
        if self.string_args is not None:
            return self.string_args
        if self.args_end >= 0:
            return self.raw[self.args_start : self.args_end]
        if self.value_kind == "string" and not final:
            return ""  # a JSON-string argument is decoded once complete
        text = self.raw[self.args_start :]
        return text.rstrip() if final else text


@dataclass
class _Call:
    index: int
    id: str
    scanner: _CallScanner
    announced: bool = False
    sent: int = 0  # characters of arguments already sent


@dataclass
class StreamingToolParser:
    """Feed model output with `feed`; call `finish` once at the end of the output."""

    fmt: ToolCallFormat
    calls_enabled: bool = True
    deltas: list[Delta] = field(default_factory=list, init=False)
    _buf: str = field(default="", init=False)
    _state: str = field(default="content", init=False)
    _ends: tuple[str, ...] = field(default=(), init=False)
    _seen_text: bool = field(default=False, init=False)  # non-whitespace content emitted
    _pending_ws: str = field(default="", init=False)
    _bare_allowed: bool = field(default=True, init=False)
    _tentative: bool = field(default=False, init=False)
    _skipped: str = field(default="", init=False)  # consumed while tentative: given back
    _call: _Call | None = field(default=None, init=False)
    _n_calls: int = field(default=0, init=False)
    _final: bool = field(default=False, init=False)

    @property
    def n_calls(self) -> int:
        return self._n_calls

    def feed(self, text: str) -> list[Delta]:
        self._buf += text
        self._run()
        return self._take()

    def finish(self) -> list[Delta]:
        self._final = True
        self._run()
        call = self._call
        if call is not None:  # the output ended inside a call (e.g. max_tokens)
            self._end_call(call, final=True)
        if self._buf:
            self._content(self._buf)
            self._buf = ""
        if self._pending_ws and not self._n_calls:
            self._emit_content(self._pending_ws)
        self._pending_ws = ""
        return self._take()

    def _take(self) -> list[Delta]:
        out, self.deltas = self.deltas, []
        return out

    # ----- content ---------------------------------------------------------------------

    def _emit_content(self, text: str) -> None:
        if self.deltas and isinstance(self.deltas[-1], ContentDelta):
            self.deltas[-1] = ContentDelta(self.deltas[-1].text + text)
        else:
            self.deltas.append(ContentDelta(text))

    def _content(self, text: str) -> None:
        """Emit content, holding back trailing whitespace until more text follows (it is
        dropped when only calls follow)."""
        body = text.rstrip()
        if body:
            self._emit_content(self._pending_ws + body)
            self._pending_ws = ""
            self._seen_text = True
        self._pending_ws += text[len(body) :]

    # ----- the state machine -------------------------------------------------------------

    def _run(self) -> None:
        while self._buf:
            before = (self._state, len(self._buf))
            if self._state == "content":
                self._in_content()
            elif self._state == "section":
                self._in_section()
            elif self._state == "name":
                self._in_name()
            else:
                self._in_call()
            if (self._state, len(self._buf)) == before:
                return  # waiting for more text

    def _in_content(self) -> None:
        buf = self._buf
        if not self.calls_enabled:
            self._content(buf)
            self._buf = ""
            return
        stripped = buf.lstrip()
        if self.fmt.bare_json and self._bare_allowed and not self._seen_text:
            if stripped[:1] in ("{", "["):
                self._skipped = self._pending_ws + buf[: len(buf) - len(stripped)]
                self._pending_ws = ""
                self._buf = stripped
                self._state, self._ends, self._tentative = "section", (), True
                return
            if not stripped and not self._final:
                return  # only whitespace so far: a bare call may still come
        self._bare_allowed = self._bare_allowed and not stripped
        found = [(buf.find(m), m) for m in self.fmt.starts if m in buf]
        if found:
            index, marker = min(found)
            self._content(buf[:index])
            self._buf = buf[index + len(marker) :]
            self._state, self._ends, self._tentative = "section", self.fmt.ends, False
            return
        keep = 0 if self._final else _held_prefix(buf, self.fmt.starts)
        self._content(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]

    def _in_section(self) -> None:
        buf = self._buf.lstrip(_SEPARATORS)
        if self._tentative:
            self._skipped += self._buf[: len(self._buf) - len(buf)]
        self._buf = buf
        if not buf:
            return
        for marker in self._ends:
            if buf.startswith(marker):
                self._buf = buf[len(marker) :]
                self._state = "content"
                return
        for marker in self.fmt.starts:  # a new block without closing the last one
            if buf.startswith(marker):
                self._buf = buf[len(marker) :]
                return
        if any(m.startswith(buf) for m in self._ends + self.fmt.starts if len(buf) < len(m)):
            if self._final:  # the output stopped inside a marker: drop the fragment
                self._buf = ""
            return
        if buf[0] in "[]":  # a list of calls (Mistral, generic)
            self._skipped += buf[0] if self._tentative else ""
            self._buf = buf[1:]
        elif buf[0] == "{":
            self._call = _Call(self._n_calls, new_call_id(), _CallScanner())
            self._state = "call"
        elif self.fmt.name_args and buf[0] in _NAME_CHARS:
            self._state = "name"
        elif self._tentative:  # what looked like a bare call is not one
            self._give_back("")
        else:  # not a call: the rest is content
            self._state = "content"
            self._bare_allowed = False

    def _in_name(self) -> None:
        buf = self._buf
        end = next((i for i, c in enumerate(buf) if c not in _NAME_CHARS), len(buf))
        name, rest = buf[:end], buf[end:]
        if name and rest.startswith(_ARGS_MARK):
            self._buf = rest[len(_ARGS_MARK) :].lstrip()
            self._call = _Call(self._n_calls, new_call_id(), _CallScanner(name=name))
            self._state = "call"
            return
        if not self._final and _ARGS_MARK.startswith(rest):
            return  # still reading the name or the [ARGS] marker
        self._state = "content"  # not a call after all
        self._bare_allowed = False

    def _in_call(self) -> None:
        call = self._call
        assert call is not None
        scanner = call.scanner
        taken = scanner.feed(self._buf)
        self._buf = self._buf[taken:]
        if self._tentative and scanner.first_key is not None:
            if scanner.first_key not in _CALL_FIRST_KEYS:
                self._give_back(scanner.raw)
                return
            self._tentative = False
            self._skipped = ""
        if self._tentative:
            if scanner.done:
                self._give_back(scanner.raw)
            return
        self._announce(call, final=False)
        if scanner.done:
            self._end_call(call, final=False)

    def _give_back(self, raw: str) -> None:
        """What looked like a bare call is not one: it and everything after is content."""
        self._call = None
        self._tentative = False
        self._bare_allowed = False
        self._state = "content"
        self._buf = self._skipped + raw + self._buf
        self._skipped = ""
        self._content(self._buf)
        self._buf = ""

    def _announce(self, call: _Call, final: bool) -> None:
        scanner = call.scanner
        if scanner.name is None:
            return
        arguments = scanner.arguments_so_far(final)
        fragment = arguments[call.sent :]
        call.sent = len(arguments)
        if not call.announced:
            call.announced = True
            self._n_calls += 1
            self.deltas.append(ToolCallDelta(call.index, fragment, call.id, scanner.name))
        elif fragment:
            self.deltas.append(ToolCallDelta(call.index, fragment))

    def _end_call(self, call: _Call, final: bool) -> None:
        scanner = call.scanner
        self._call = None
        if scanner.name is None:  # an object without a name is not a call: give it back
            self._state = "content"
            self._bare_allowed = False
            self._content(scanner.raw)
            return
        if scanner.args_start < 0 and not call.sent:
            scanner.string_args = "{}"  # a call without arguments
            scanner.args_start = 0
        self._announce(call, final=True)
        self._state = "section"


@dataclass(frozen=True)
class ParsedOutput:
    """A whole answer split into content and OpenAI ``tool_calls`` items."""

    content: str | None
    tool_calls: list[dict[str, Any]]


def collect_deltas(deltas: list[Delta]) -> ParsedOutput:
    """Assemble deltas into the non-streamed message shape."""
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            content.append(delta.text)
        elif delta.name is not None:
            function = {"name": delta.name, "arguments": delta.arguments}
            calls.append({"id": delta.id, "type": "function", "function": function})
        else:
            calls[delta.index]["function"]["arguments"] += delta.arguments
    text = "".join(content)
    return ParsedOutput(text if text.strip() or not calls else None, calls)


def parse_tool_calls(text: str, fmt: ToolCallFormat) -> ParsedOutput:
    """Split a complete answer into content and tool calls, exactly as streaming would."""
    parser = StreamingToolParser(fmt)
    deltas = parser.feed(text) + parser.finish()
    return collect_deltas(deltas)
