"""Tool calling, independent of any HTTP dialect: check tools, render them into a prompt,
constrain generation to calls, and parse calls out of the output.

Every dialect (OpenAI chat, Responses, Anthropic, Ollama) converts its own tool shapes to
OpenAI's chat shapes and then uses this module:

- `parse_tools(raw)` -> list of `ToolSpec` from OpenAI ``tools`` items
  (``{"type": "function", "function": {"name", "description", "parameters"}}``); bad input
  raises `ToolError` (HTTP 400, with the offending `param`).
- `parse_tool_choice(raw, tools)` -> `ToolChoice` (``none`` / ``auto`` / ``required`` or one
  named function); a name that is not among the tools raises `ToolError`.
- `render(template, messages, tools, fmt)` -> prompt text. Messages are OpenAI chat messages:
  assistant messages may carry ``tool_calls`` (``function.arguments`` a JSON string, as
  OpenAI sends it; templates get it as an object), ``tool`` messages carry ``tool_call_id``.
  GGUF templates see ``tools`` as OpenAI tool objects, like Hugging Face's; runner's built-in
  templates also get ``tools_prompt`` (instructions in the family's call format) and each
  assistant message's calls written out as ``tool_calls_text``.
- `build_tool_grammar(tools, choice, fmt, parallel)` -> `ToolGrammar` (GBNF, lazy or not, with
  trigger patterns) or None: ``required`` / named choices force a call in the family's
  format; ``auto`` gives a lazy grammar that starts at the family's trigger (none for
  families without a trigger); ``none`` gives None. Raises `GrammarError` for a schema that
  cannot be compiled.
- `StreamingToolParser(fmt)` / `parse_tool_calls(text, fmt)` (from `toolcalls`): output text
  -> content + OpenAI ``tool_calls`` (streamed as deltas).
- `detect_format(template_source, arch, override)` -> the model family's `ToolCallFormat`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .grammar import GrammarError, schema_to_grammar
from .template import ChatTemplate
from .toolcalls import (
    FORMATS,
    ParsedOutput,
    StreamingToolParser,
    ToolCallFormat,
    detect_format,
    parse_tool_calls,
)
from .toolcalls.base import gbnf_literal

__all__ = [
    "FORMATS",
    "ParsedOutput",
    "StreamingToolParser",
    "ToolCallFormat",
    "ToolChoice",
    "ToolError",
    "ToolGrammar",
    "ToolSpec",
    "build_tool_grammar",
    "detect_format",
    "parse_tool_calls",
    "parse_tool_choice",
    "parse_tools",
    "render",
    "template_messages",
]

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_REGEX_META = set("\\^$.|?*+()[]{}")


class ToolError(ValueError):
    """An invalid tool definition or tool choice; reported as HTTP 400 naming `param`."""

    def __init__(self, message: str, param: str = "tools") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    strict: bool = False

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters or {"type": "object", "properties": {}})
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    mode: Literal["none", "auto", "required"] = "auto"
    name: str | None = None  # with mode "required": the one function allowed

    @property
    def forced(self) -> bool:
        return self.mode == "required"


@dataclass(frozen=True)
class ToolGrammar:
    gbnf: str
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = ()


def parse_tools(raw: Any) -> list[ToolSpec]:
    """`ToolSpec`s from OpenAI ``tools`` (None or [] -> no tools); raises `ToolError`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ToolError("tools must be a list")
    if len(raw) > MAX_TOOLS:
        raise ToolError(f"at most {MAX_TOOLS} tools are supported")
    specs: list[ToolSpec] = []
    for i, item in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(item, Mapping) or item.get("type", "function") != "function":
            raise ToolError(f"{where} must be an object with type 'function'")
        function = item.get("function")
        if not isinstance(function, Mapping):
            raise ToolError(f"{where}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolError(
                f"{where}.function.name must be 1-64 characters of letters, digits, _ . or -"
            )
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise ToolError(f"{where}.function.description must be a string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ToolError(f"{where}.function.parameters must be a JSON schema object")
        if any(s.name == name for s in specs):
            raise ToolError(f"tool name {name!r} is used twice")
        strict = bool(function.get("strict", False))
        specs.append(ToolSpec(name, description, parameters, strict))
    return specs


def parse_tool_choice(raw: Any, tools: Sequence[ToolSpec]) -> ToolChoice:
    """OpenAI ``tool_choice``: None (auto with tools, none without), ``"none"``, ``"auto"``,
    ``"required"``, or ``{"type": "function", "function": {"name": ...}}``."""
    if raw is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise ToolError(f"unsupported tool_choice {raw!r}", "tool_choice")
        if raw != "none" and not tools:
            raise ToolError(f"tool_choice {raw!r} needs tools", "tool_choice")
        return ToolChoice(raw)  # type: ignore[arg-type]
    if isinstance(raw, Mapping):
        function = raw.get("function")
        name = function.get("name") if isinstance(function, Mapping) else raw.get("name")
        if raw.get("type", "function") != "function" or not isinstance(name, str):
            raise ToolError(
                "tool_choice must be a string or {'type': 'function', 'function': {'name'}}",
                "tool_choice",
            )
        if not any(t.name == name for t in tools):
            raise ToolError(
                f"tool_choice names function {name!r}, which is not in tools", "tool_choice"
            )
        return ToolChoice("required", name)
    raise ToolError("tool_choice must be a string or an object", "tool_choice")


# ----- rendering ---------------------------------------------------------------------------


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def template_messages(
    messages: Sequence[Mapping[str, Any]], fmt: ToolCallFormat
) -> list[dict[str, Any]]:
    """Copies of `messages` as chat templates expect them: tool-call arguments as objects
    (Hugging Face convention), plus ``tool_calls_text`` for runner's built-in templates."""
    out: list[dict[str, Any]] = []
    for message in messages:
        msg = dict(message)
        calls = msg.get("tool_calls")
        if calls:
            if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
                raise ToolError("tool_calls must be a list of objects", "messages")
            msg["tool_calls_text"] = fmt.write_calls([dict(c) for c in calls])
            fixed = []
            for call in calls:
                call = copy.deepcopy(dict(call))
                function = call.get("function")
                if isinstance(function, Mapping):
                    function = dict(function)
                    function["arguments"] = _arguments_object(function.get("arguments"))
                    call["function"] = function
                fixed.append(call)
            msg["tool_calls"] = fixed
        out.append(msg)
    return out


def tools_prompt(tools: Sequence[ToolSpec], fmt: ToolCallFormat) -> str:
    """Instructions for runner's built-in templates: the tools and how to call them."""
    if not tools:
        return ""
    listing = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    example = fmt.write_calls(
        [{"function": {"name": "function_name", "arguments": {"argument": "value"}}}]
    )
    return (
        "You can call these functions (JSON schemas):\n"
        f"{listing}\n\n"
        f"To call a function, answer only with:\n{example}\n"
        "The results come back in the next message."
    )


def _without_tool_support(
    source: str, messages: list[dict[str, Any]], prompt: str
) -> list[dict[str, Any]]:
    """For a template that knows nothing of tools: the tool instructions as (part of) the
    system message, calls written into the assistant's content, results as user turns."""
    knows_calls = "tool_calls" in source
    knows_results = "'tool'" in source or '"tool"' in source
    out: list[dict[str, Any]] = []
    for message in messages:
        msg = dict(message)
        if msg.get("tool_calls_text") and not knows_calls:
            content = msg.get("content") or ""
            msg["content"] = (content + "\n" if content else "") + msg["tool_calls_text"]
            msg.pop("tool_calls", None)
        if msg.get("role") == "tool" and not knows_results:
            msg = {"role": "user", "content": f"Tool result:\n{msg.get('content') or ''}"}
        out.append(msg)
    if prompt and "tools" not in source:
        if out and out[0].get("role") in ("system", "developer"):
            first = dict(out[0])
            first["content"] = f"{first.get('content') or ''}\n\n{prompt}".strip()
            out[0] = first
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def render(
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[ToolSpec],
    fmt: ToolCallFormat,
    *,
    extra: Mapping[str, Any] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt for `messages` with `tools` (may be empty) through `template`.

    A template that never mentions tools (many GGUFs' templates) still gets them: runner's
    instructions go into the system message, and calls and results become plain text.
    """
    variables = dict(extra or {})
    prompt = tools_prompt(tools, fmt)
    variables["tools_prompt"] = prompt
    prepared = _without_tool_support(template.source, template_messages(messages, fmt), prompt)
    return template.render(
        prepared,
        tools=[t.to_openai() for t in tools] or None,
        extra=variables,
        add_generation_prompt=add_generation_prompt,
    )


# ----- grammars ----------------------------------------------------------------------------


def _rewrite_refs(node: Any, prefix: str, defs: dict[str, Any]) -> Any:
    """Copy of a tool's schema whose local ``$ref``s point into the combined schema's $defs."""
    if isinstance(node, list):
        return [_rewrite_refs(x, prefix, defs) for x in node]
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$defs", "definitions") and isinstance(value, Mapping):
            for name, sub in value.items():
                defs[f"{prefix}{name}"] = _rewrite_refs(sub, prefix, defs)
            continue
        if key == "$ref" and isinstance(value, str):
            if value == "#":
                value = f"#/$defs/{prefix}_root"
            else:
                for local in ("#/$defs/", "#/definitions/"):
                    if value.startswith(local):
                        value = f"#/$defs/{prefix}{value[len(local) :]}"
        out[key] = _rewrite_refs(value, prefix, defs)
    return out


def call_schema(tools: Sequence[ToolSpec], fmt: ToolCallFormat) -> dict[str, Any]:
    """One JSON schema accepting a call of any of `tools` in `fmt`'s JSON spelling."""
    defs: dict[str, Any] = {}
    options = []
    for i, tool in enumerate(tools):
        prefix = f"t{i}_"
        params = dict(tool.parameters or {"type": "object"})
        params = _rewrite_refs(params, prefix, defs)
        if "#/$defs/" + prefix + "_root" in json.dumps(params):
            defs[f"{prefix}_root"] = params
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, fmt.arguments_key: params},
                "required": ["name", fmt.arguments_key],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def _regex_literal(text: str) -> str:
    return "".join("\\" + c if c in _REGEX_META else c for c in text)


def build_tool_grammar(
    tools: Sequence[ToolSpec],
    choice: ToolChoice,
    fmt: ToolCallFormat,
    parallel: bool = False,
) -> ToolGrammar | None:
    """The grammar that makes output a call (see the module docstring); None for free text.

    The call schema is compiled whenever tools may be called, so a schema llama.cpp cannot
    handle is a 400 up front rather than only when a call is forced.
    """
    if choice.mode == "none" or not tools:
        return None
    allowed = [t for t in tools if choice.name is None or t.name == choice.name]
    call_gbnf = schema_to_grammar(call_schema(allowed, fmt))
    # The converter names its start rule `root`; ours wraps it in the family's markup.
    renamed, count = re.subn(r"^root ::=", "tool-call ::=", call_gbnf, count=1, flags=re.M)
    if count != 1:
        raise GrammarError("could not build the tool-call grammar")
    root = fmt.grammar_root("tool-call", parallel)
    if choice.forced:
        return ToolGrammar(f"{root}\n{renamed}")
    if fmt.trigger is None:
        return None  # "auto" without a trigger: free text, parsed afterwards
    starts_with_trigger = (fmt.list_open or fmt.call_prefix).startswith(fmt.trigger)
    if not starts_with_trigger:  # e.g. Llama's optional <|python_tag|>
        root = root.replace("root ::= ", f"root ::= {gbnf_literal(fmt.trigger)}? ", 1)
    pattern = _regex_literal(fmt.trigger)
    if fmt.trigger_needs_space:
        pattern = f"({pattern})\\s"  # the grammar starts at the group, the space included
    return ToolGrammar(f"{root}\n{renamed}", lazy=True, trigger_patterns=(pattern,))
