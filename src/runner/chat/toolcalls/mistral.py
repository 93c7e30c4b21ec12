"""Mistral / Mixtral / Mistral Nemo / Devstral: one ``[TOOL_CALLS]`` marker, then either a
JSON list of calls (v3 templates)

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]

or (v11+ templates, Mistral Small 3.2, Devstral 2507) ``name[ARGS]{...}`` per call

    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}

Both parse; a constrained call is written in the list form. runner's output text leaves out
special tokens, and ``[TOOL_CALLS]`` is one in most Mistral GGUFs, so a list of calls at the
start of the answer also counts."""

from .base import ToolCallFormat

MISTRAL = ToolCallFormat(
    name="mistral",
    starts=("[TOOL_CALLS]",),
    bare_json=True,
    name_args=True,
    call_separator=", ",
    list_open="[TOOL_CALLS][",
    list_close="]",
    # No lazy grammar: the trigger may be followed by either spelling, and the grammar
    # writes only the list one (see `ToolCallFormat.trigger`). "auto" calls are parsed.
    trigger=None,
    description='[TOOL_CALLS][{"name": ..., "arguments": {...}}] or [TOOL_CALLS]name[ARGS]{...}',
)
