"""Gemma: Google publishes no tool-call tokens for Gemma 2/3, so runner defines a format of its
own, which its built-in Gemma template teaches the model (README, "Tools and reasoning"):
each call is a fenced block tagged ``tool_call`` holding a JSON object,

    ```tool_call
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    ```

and tool results come back in a user turn as ```` ```tool_result ```` blocks. A bare JSON call
object at the start of the answer (what instruction-tuned Gemmas often write) parses too."""

from .base import ToolCallFormat

GEMMA = ToolCallFormat(
    name="gemma",
    starts=("```tool_call",),
    ends=("```",),
    bare_json=True,
    call_prefix="```tool_call\n",
    call_suffix="\n```",
    call_separator="\n",
    trigger="```tool_call",
    trigger_needs_space=True,  # so that "```tool_calls" is no trigger
    description='```tool_call fenced blocks holding {"name": ..., "arguments": {...}}',
)
