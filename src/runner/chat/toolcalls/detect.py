"""Which tool-call format a model uses, from its chat template and architecture."""

from __future__ import annotations

from .base import ToolCallFormat
from .gemma import GEMMA
from .generic import GENERIC
from .hermes import HERMES
from .llama3 import LLAMA3
from .mistral import MISTRAL

FORMATS: dict[str, ToolCallFormat] = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GEMMA, GENERIC)}


def detect_format(
    template_source: str | None, arch: str = "", override: str | None = None
) -> ToolCallFormat:
    """`override` (a `FORMATS` key) if given, else the family whose markers the template
    mentions, else by architecture / template style; `GENERIC` when nothing matches."""
    if override:
        return FORMATS[override]
    source = template_source or ""
    if "<tool_call>" in source:
        return HERMES
    if "[TOOL_CALLS]" in source:
        return MISTRAL
    if "<|python_tag|>" in source or "<|start_header_id|>" in source:
        return LLAMA3
    if "<start_of_turn>" in source or (arch or "").lower().startswith("gemma"):
        return GEMMA
    if "<|im_start|>" in source:
        return HERMES
    return GENERIC
