"""A scanner for one tool call written as JSON, fed text as it is generated.

It tracks strings, escapes and nesting, so it needs no complete document: it finds the call's
``name`` and the raw text of its arguments (``arguments`` or ``parameters``) while they are
still being written, which is what lets the arguments stream out as they arrive.
"""

from __future__ import annotations

import json

from .base import ARGUMENT_KEYS


class CallScanner:
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
