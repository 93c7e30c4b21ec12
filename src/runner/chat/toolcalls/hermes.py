"""Hermes / Qwen 2.5 / Qwen 3 (and runner's ChatML fallback): each call in its own block,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

several blocks for parallel calls."""

from .base import ToolCallFormat

HERMES = ToolCallFormat(
    name="hermes",
    starts=("<tool_call>",),
    ends=("</tool_call>",),
    call_prefix="<tool_call>\n",
    call_suffix="\n</tool_call>",
    call_separator="\n",
    trigger="<tool_call>",
    description='<tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks',
)
