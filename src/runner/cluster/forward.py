"""`ForwardedRequest`: an HTTP request as the front door hands it to a replica, with what the
routers read from it (`hashes` for runner's cache-following router, `prompt` text for Ray's
`PrefixCacheAffinityRouter`, which looks for a `prompt` attribute and must never find it
empty)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    scheme: str = "http"
    hashes: list[int] = field(default_factory=list)  # of the prompt's whole blocks
    block: int = 0  # tokens per block
    n_tokens: int = 0  # prompt length
    prompt: str = ""
    target: str = ""  # a replica's unique id: only it may take the request (broadcasts)
    cache_key: str = ""  # OpenAI's prompt_cache_key: the router keeps a key on one replica

    def scope(self) -> dict[str, Any]:
        """The ASGI scope runner's app sees, as if the client had called it directly."""
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": self.scheme,
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": self.query_string,
            "headers": self.headers,
            "client": self.client,
            "server": self.server,
            "state": {},
        }


def prompt_text(body: bytes) -> str:
    """The prompt as plain text (system, message contents, prompt joined), for text-prefix
    routers; empty when the body has none."""
    try:
        raw = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(raw, dict):
        return ""
    parts = [raw["system"]] if isinstance(raw.get("system"), str) else []
    if isinstance(raw.get("messages"), list):
        parts += [_content(m) for m in raw["messages"] if isinstance(m, dict)]
    if isinstance(raw.get("prompt"), str):
        parts.append(raw["prompt"])
    return "".join(parts)


def cache_key_of(body: bytes) -> str:
    """The request's `prompt_cache_key` (OpenAI Chat Completions and Responses), or ""."""
    try:
        raw = json.loads(body)
    except ValueError:
        return ""
    key = raw.get("prompt_cache_key") if isinstance(raw, dict) else None
    return key if isinstance(key, str) else ""


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
