"""Any other model: a JSON call object (``{"name": ..., "arguments": {...}}``, or
``"parameters"``) at the start of the answer, several separated by newlines. A grammar-forced
call (``tool_choice`` required or named) is written this way, so it works on any model."""

from .base import ToolCallFormat

GENERIC = ToolCallFormat(
    name="generic",
    bare_json=True,
    call_separator="\n",
    description='{"name": ..., "arguments": {...}} JSON objects',
)
