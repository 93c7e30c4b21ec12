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

An answer that ends inside a call (the token limit) reports the call as it was written: its
arguments are the JSON text so far (maybe none), never completed or replaced, and its index
is in `cut_calls`. A call cut before its name is complete cannot be reported and is dropped,
never turned into content (nor, with `calls_forced`, an opening marker cut short): the
dialects say the answer was cut by its finish reason.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .base import ToolCallFormat
from .scanner import CallScanner

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


@dataclass
class _Call:
    index: int
    id: str
    scanner: CallScanner
    announced: bool = False
    sent: int = 0  # characters of arguments already sent


@dataclass
class StreamingToolParser:
    """Feed model output with `feed`; call `finish` once at the end of the output."""

    fmt: ToolCallFormat
    calls_enabled: bool = True
    # The output is calls only (a forced call's grammar): an end inside an opening marker
    # is a cut call, not content.
    calls_forced: bool = False
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
    cut_calls: set[int] = field(default_factory=set, init=False)  # ended by the output's end

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
            self._cut_call(call)
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
        keep = 0 if self._final and not self.calls_forced else _held_prefix(buf, self.fmt.starts)
        self._content(buf[: len(buf) - keep])
        self._buf = "" if self._final else buf[len(buf) - keep :]

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
            self._call = _Call(self._n_calls, new_call_id(), CallScanner())
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
            self._call = _Call(self._n_calls, new_call_id(), CallScanner(name=name))
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

    def _cut_call(self, call: _Call) -> None:
        """The output ended inside `call`: report what was written of it, invent nothing."""
        scanner = call.scanner
        if self._tentative and scanner.first_key is None:  # maybe never a call: content
            self._give_back(scanner.raw)
            return
        self._call = None
        if scanner.name is None:  # cut before its name was whole: nothing to report
            self._state = "section"
            return
        self.cut_calls.add(call.index)
        self._announce(call, final=True)
        self._state = "section"

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
