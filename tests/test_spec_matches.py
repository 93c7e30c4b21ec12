"""/openapi.json says what the server accepts, where schemathesis found them apart: a token
limit of 0 (refused: -1 or at least 1), Ollama's option ranges (those of the chat route they
become), and `GET /engines/llama.cpp/_configure` (served, so documented). Each body is judged
by the served document and sent to the real server: both must agree."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from server_proc import MODEL

pytestmark = pytest.mark.slow


def _validator(spec: dict[str, Any], path: str) -> Draft202012Validator:
    body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**body, "components": spec["components"]})


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
OLLAMA = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("/engines/llama.cpp/v1/chat/completions", {**CHAT, "max_tokens": 0}, False),
    ("/engines/llama.cpp/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, False),
    ("/engines/llama.cpp/v1/chat/completions", {**CHAT, "max_tokens": 1}, True),
    ("/engines/llama.cpp/v1/chat/completions", {**CHAT, "max_tokens": 1, "n_predict": 0}, False),
    ("/engines/llama.cpp/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 0}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 0}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "temperature": 3}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "top_p": 1.5}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "min_p": -0.1}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "repeat_penalty": 11}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "presence_penalty": -3}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "top_k": -1}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "stop": ["x"] * 17}}, False),
    ("/api/chat", {**OLLAMA, "options": {"num_predict": 1, "temperature": 2, "top_k": 0}}, True),
    ("/api/generate", {**OLLAMA, "prompt": "a", "options": {"num_predict": 0}}, False),
]


@pytest.mark.parametrize(("path", "body", "valid"), CASES)
def test_the_document_and_the_server_agree(
    server: Any, path: str, body: dict[str, Any], valid: bool
) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    assert _validator(spec, path).is_valid(body) is valid
    if path == "/api/generate":
        body = {k: v for k, v in body.items() if k != "messages"}
    response = httpx.post(server.url + path, json=body, timeout=120)
    assert (response.status_code == 200) is valid, response.text[:300]
    if not valid:
        assert response.status_code == 400


def test_every_route_served_is_documented(server: Any) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "get" in spec["paths"]["/engines/llama.cpp/_configure"]
    assert httpx.get(server.url + "/engines/llama.cpp/_configure").status_code == 200
