"""Llama 3.1 / 3.2 / 3.3 JSON tool calls: the answer is a JSON object

    {"name": "get_weather", "parameters": {"city": "Paris"}}

optionally after ``<|python_tag|>``; several calls are separated by ``;``."""

from .base import ToolCallFormat

LLAMA3 = ToolCallFormat(
    name="llama3",
    starts=("<|python_tag|>",),
    bare_json=True,
    arguments_key="parameters",
    call_separator="; ",
    trigger="<|python_tag|>",
    description='{"name": ..., "parameters": {...}} (optionally after <|python_tag|>)',
)
