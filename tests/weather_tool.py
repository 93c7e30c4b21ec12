"""The get_weather tool that the tool-calling tests give the model, in each dialect's
spelling. Its one argument is bounded, so a forced call completes within the tests'
`max_tokens` whatever city the model writes."""

from __future__ import annotations

from typing import Any

NAME = "get_weather"
DESCRIPTION = "Current weather for a city."
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
}

# OpenAI chat completions, Ollama and the web page.
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": NAME, "description": DESCRIPTION, "parameters": PARAMETERS},
}
# OpenAI Responses: a flat function tool.
RESPONSES_WEATHER = {"type": "function", "name": NAME, "description": DESCRIPTION, "parameters": PARAMETERS}  # fmt: skip
# Anthropic Messages.
ANTHROPIC_WEATHER = {"name": NAME, "description": DESCRIPTION, "input_schema": PARAMETERS}
