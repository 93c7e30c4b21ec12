"""Tool-call formats per model family, their detection, and the (streaming) parser.

`FORMATS` maps a family name (the ``tool-format`` setting of ``_configure``) to its
`ToolCallFormat`; `detect_format` picks one from a chat template's source and the GGUF
architecture; `StreamingToolParser` turns model output into content and OpenAI tool-call
deltas, `parse_tool_calls` does the same for a whole answer.
"""

from .base import ToolCallFormat
from .detect import FORMATS, detect_format
from .gemma import GEMMA
from .generic import GENERIC
from .hermes import HERMES
from .llama3 import LLAMA3
from .mistral import MISTRAL
from .stream import (
    ContentDelta,
    ParsedOutput,
    StreamingToolParser,
    ToolCallDelta,
    parse_tool_calls,
)

__all__ = [
    "FORMATS",
    "GEMMA",
    "GENERIC",
    "HERMES",
    "LLAMA3",
    "MISTRAL",
    "ContentDelta",
    "ParsedOutput",
    "StreamingToolParser",
    "ToolCallDelta",
    "ToolCallFormat",
    "detect_format",
    "parse_tool_calls",
]
