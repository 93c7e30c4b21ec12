"""What a stored response keeps of its request: the fields runner reads, nothing else.

The store is bounded in bytes and drops its oldest records to fit, so anything it keeps that
costs the client nothing (fields the model never sees: reasoning items' content, unknown
keys, oversized metadata) would let one client push everyone else's conversations out
cheaply. Kept: what a prompt is built from (and so is bounded by the context size), the
item ids `input_items` lists, and metadata within OpenAI's own bounds (a 400 past them).
"""

from __future__ import annotations

from typing import Any

from runner.api.errors.table import APIError

# OpenAI's bounds on `metadata`.
METADATA_PAIRS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512

# Per item type, the keys runner reads (`routes.chat_messages`) or lists back.
_ITEM_KEYS = {
    "message": ("type", "id", "role", "content", "status"),
    "function_call": ("type", "id", "call_id", "name", "arguments", "status"),
    "function_call_output": ("type", "id", "call_id", "output", "status"),
    # The model never sees reasoning items: their id is kept, their content is not.
    "reasoning": ("type", "id"),
}
_PART_KEYS = ("type", "text")
_TOOL_KEYS = ("type", "name", "description", "parameters", "strict")
_FORMAT_KEYS = ("type", "name", "description", "schema", "strict")


def check_metadata(metadata: Any) -> None:
    """400 (param `metadata`) unless it is at most 16 string pairs of at most 64-character
    keys and 512-character values, as in OpenAI's API."""
    if metadata is None:
        return
    problem = None
    if not isinstance(metadata, dict):
        problem = "metadata must be an object"
    elif len(metadata) > METADATA_PAIRS:
        problem = f"metadata holds at most {METADATA_PAIRS} pairs, got {len(metadata)}"
    elif any(len(key) > METADATA_KEY_CHARS for key in metadata):
        problem = f"metadata keys are at most {METADATA_KEY_CHARS} characters"
    elif any(not isinstance(v, str) or len(v) > METADATA_VALUE_CHARS for v in metadata.values()):
        problem = f"metadata values are strings of at most {METADATA_VALUE_CHARS} characters"
    if problem:
        raise APIError(400, problem, "invalid_request", param="metadata")


def _part(part: Any) -> Any:
    return {k: part[k] for k in _PART_KEYS if k in part} if isinstance(part, dict) else part


def stored_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input items as stored and listed by `input_items` (each already has an id)."""
    out = []
    for item in items:
        kept = {
            k: item[k] for k in _ITEM_KEYS.get(item.get("type", ""), ("type", "id")) if k in item
        }
        if item.get("type") == "reasoning":
            kept["summary"] = []
        if isinstance(kept.get("content"), list):
            kept["content"] = [_part(part) for part in kept["content"]]
        if isinstance(kept.get("output"), list):
            kept["output"] = [_part(part) for part in kept["output"]]
        out.append(kept)
    return out


def echoed_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [{k: t[k] for k in _TOOL_KEYS if k in t} for t in tools or [] if isinstance(t, dict)]


def echoed_tool_choice(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {"type": raw.get("type"), "name": raw.get("name")}
    return raw or "auto"


def echoed_text(text: dict[str, Any] | None) -> dict[str, Any]:
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict):
        return {"format": {"type": "text"}}
    return {"format": {k: fmt[k] for k in _FORMAT_KEYS if k in fmt}}
