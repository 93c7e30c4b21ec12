"""What a model family's tool-call markup looks like, as data.

A `ToolCallFormat` says how calls are opened and closed in the model's output (markers), how
each call is spelled (a JSON object with a name and an arguments key, or Mistral's
``name[ARGS]{...}``), how a grammar wraps a constrained call, and how runner's own built-in
templates write calls back into a prompt. The parser (`stream.py`) and the grammar builder
(`chat/tools.py`) read these fields; the family modules only fill them in.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

# Keys that name the arguments object of a JSON-spelled call, in preference order.
ARGUMENT_KEYS = ("arguments", "parameters")


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\r", "\\r").replace("\t", "\\t") + '"'


@dataclass(frozen=True)
class ToolCallFormat:
    """One family's tool-call markup.

    `starts` open a section of calls and `ends` close it (an empty `ends` runs to the end of
    the output). Inside a section, calls are JSON objects (``{"name": ..., "arguments": {...}}``
    or ``"parameters"``), optionally in a JSON list and separated by ``,`` or ``;``; with
    `name_args` also ``name[ARGS]{...}``. `bare_json` accepts a call object with no marker at
    the very start of the output. Each call in a constrained answer is written as
    `call_prefix` + JSON + `call_suffix`, calls joined by `call_separator`, the whole inside
    `list_open` / `list_close`.
    """

    name: str
    starts: tuple[str, ...] = ()
    ends: tuple[str, ...] = ()
    bare_json: bool = False
    name_args: bool = False
    arguments_key: str = "arguments"
    call_prefix: str = ""
    call_suffix: str = ""
    call_separator: str = "\n"
    list_open: str = ""
    list_close: str = ""
    # Literal text whose appearance in free output starts the call grammar ("auto"), and
    # whether it must be followed by whitespace to count. llama.cpp replays the text from the
    # trigger to the end of the token that completed it into the grammar, and a replay the
    # grammar refuses aborts the process, so a trigger must be unambiguous where it ends.
    trigger: str | None = None
    trigger_needs_space: bool = False
    description: str = ""

    def grammar_root(self, call_rule: str, parallel: bool) -> str:
        """GBNF ``root`` for one call (or, with `parallel`, one or more) of `call_rule`.

        The newlines the format puts around a call may be any short run of whitespace
        (``tool-ws``), so a model that writes ``<tool_call>{`` still fits."""
        prefix = self.call_prefix.rstrip("\n")
        suffix = self.call_suffix.lstrip("\n")
        parts = [
            gbnf_literal(prefix) + " tool-ws" if prefix else "",
            call_rule,
            "tool-ws " + gbnf_literal(suffix) if suffix else "",
        ]
        one = " ".join(part for part in parts if part)
        body = f"( {one} )"
        if parallel:
            body += f" ( {gbnf_literal(self.call_separator)} {body} )*"
        if self.list_open:
            body = f"{gbnf_literal(self.list_open)} {body} {gbnf_literal(self.list_close)}"
        return f"root ::= {body}\ntool-ws ::= [ \\t\\n]{{0,4}}"

    def write_calls(self, calls: list[dict[str, Any]]) -> str:
        """The assistant text for `calls` (OpenAI ``tool_calls`` items), as this family writes
        them; used by runner's built-in templates to put earlier calls back in a prompt."""
        parts = []
        for call in calls:
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                with contextlib.suppress(ValueError):
                    arguments = json.loads(arguments)
            body = json.dumps(
                {"name": function.get("name", ""), self.arguments_key: arguments or {}},
                ensure_ascii=False,
            )
            parts.append(f"{self.call_prefix}{body}{self.call_suffix}")
        text = self.call_separator.join(parts)
        return f"{self.list_open}{text}{self.list_close}" if self.list_open else text
