"""An async HTTP client for OpenAI-compatible servers: streaming chat completions timed on
the client (time to first token, decode rate) plus the server's own `timings` when it sends
them (runner, llama-server), Prometheus `/metrics` and `/tokenize` where available.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

_METRIC_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
_MODEL_LABEL = re.compile(r'model="([^"]*)"')


class BenchError(Exception):
    """A benchmark cannot go on (server unreachable, a request failed where none may)."""


def normalize_base(url: str) -> str:
    """The OpenAI base URL (ending in `/v1`); a bare `http://host:port` gets `/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def root_url(base: str) -> str:
    """Server root from an OpenAI base URL: drops `/v1` and a DMR-style `/engines[/backend]`."""
    root = base.rstrip("/").removesuffix("/v1")
    return re.sub(r"/engines(/[^/]+)?$", "", root)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (`q` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Result:
    """One streamed completion. Times are `time.perf_counter()` seconds."""

    started: float
    ended: float = 0.0
    first_token: float | None = None
    error: str | None = None
    chunks: int = 0  # chunks carrying text
    text: str = ""
    timings: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        n = self.timings.get("predicted_n") or self.usage.get("completion_tokens")
        return int(n) if n else self.chunks

    @property
    def prompt_tokens(self) -> int | None:
        if "prompt_n" in self.timings:
            return int(self.timings["prompt_n"]) + int(self.timings.get("cache_n") or 0)
        n = self.usage.get("prompt_tokens")
        return int(n) if n is not None else None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else 1e3 * (self.first_token - self.started)

    @property
    def total_ms(self) -> float:
        return 1e3 * (self.ended - self.started)

    @property
    def stream_tps(self) -> float | None:
        """Client-side decode rate: tokens after the first over the time after the first."""
        n = self.output_tokens
        if self.first_token is None or n < 2 or self.ended <= self.first_token:
            return None
        return (n - 1) / (self.ended - self.first_token)

    def figures(self) -> dict[str, Any]:
        """The numbers worth keeping in the JSON report."""
        t = self.timings
        return {
            "ok": self.ok,
            "error": self.error,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "ttft_ms": self.ttft_ms,
            "total_ms": self.total_ms,
            "stream_tps": self.stream_tps,
            "cache_n": t.get("cache_n"),
            "prompt_n": t.get("prompt_n"),
            "prompt_ms": t.get("prompt_ms"),
            "predicted_n": t.get("predicted_n"),
            "predicted_ms": t.get("predicted_ms"),
            "predicted_per_second": t.get("predicted_per_second"),
            "cache_source": t.get("cache_source"),
        }


class BenchClient:
    """Talks to one server; use as `async with BenchClient(base, model) as client`."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base = normalize_base(base_url)
        self.root = root_url(self.base)
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
        )

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        *,
        ignore_eos: bool = False,
        cache_prompt: bool | None = None,
    ) -> Result:
        """A streaming chat completion at temperature 0; errors are returned, not raised."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:
            body["ignore_eos"] = True
        if cache_prompt is not None:
            body["cache_prompt"] = cache_prompt
        return await self._stream("/chat/completions", body)

    async def completion(self, prompt: str, max_tokens: int, *, ignore_eos: bool = False) -> Result:
        """A streaming raw text completion at temperature 0: no chat template, so two servers
        with the same tokenizer get the same prompt tokens."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:
            body["ignore_eos"] = True
        return await self._stream("/completions", body)

    async def _stream(self, path: str, body: dict[str, Any]) -> Result:
        result = Result(started=time.perf_counter())
        try:
            async with self._http.stream("POST", self.base + path, json=body) as r:
                if r.status_code != 200:
                    result.error = f"HTTP {r.status_code}: {(await r.aread()).decode()[:300]}"
                else:
                    await self._read_stream(r, result)
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        result.ended = time.perf_counter()
        return result

    @staticmethod
    async def _read_stream(response: httpx.Response, result: Result) -> None:
        parts: list[str] = []
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                result.error = str(chunk["error"])[:300]
                break
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or choice.get("text")
                if text:
                    if result.first_token is None:
                        result.first_token = time.perf_counter()
                    result.chunks += 1
                    parts.append(text)
            result.timings = chunk.get("timings") or result.timings
            result.usage = chunk.get("usage") or result.usage
        result.text = "".join(parts)
        if result.first_token is None and result.ok:  # no text at all: count the end
            result.first_token = time.perf_counter()

    async def count_tokens(self, text: str) -> int | None:
        """Token count from the server's `/tokenize` (runner, llama-server), else None."""
        try:
            r = await self._http.post(
                self.root + "/tokenize", json={"model": self.model, "content": text}
            )
            return len(r.json()["tokens"]) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def metrics(self, model: str | None = None) -> dict[str, float] | None:
        """`/metrics` summed per series name (only `model`'s series where labelled so)."""
        try:
            r = await self._http.get(self.root + "/metrics")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return parse_metrics(r.text, model)

    async def server_info(self) -> dict[str, Any]:
        """Whatever the server says about itself: runner's `/engines/status`, llama-server's
        `/props` (only those that answer with JSON)."""
        info: dict[str, Any] = {}
        for name, url in (("status", "/engines/status"), ("props", "/props")):
            try:
                r = await self._http.get(self.root + url, timeout=10.0)
                if r.status_code == 200:
                    info[name] = r.json()
            except (httpx.HTTPError, ValueError):
                continue
        return info


def parse_metrics(text: str, model: str | None = None) -> dict[str, float]:
    """Prometheus text -> {name: value summed over series}. Where some series of a name carry
    `model="<model>"` (or a name starting with `<model>:`), only those count."""
    series: dict[str, list[tuple[str | None, float]]] = {}
    for line in text.splitlines():
        m = _METRIC_LINE.match(line)
        if not m or line.startswith("#"):
            continue
        label = _MODEL_LABEL.search(m.group(2) or "")
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        series.setdefault(m.group(1), []).append((label.group(1) if label else None, value))
    out: dict[str, float] = {}
    for name, items in series.items():
        mine = [v for lab, v in items if model and lab and _same_model(lab, model)]
        out[name] = sum(mine) if mine else sum(v for _, v in items)
    return out


def _same_model(label: str, model: str) -> bool:
    return label == model or label.startswith(model + ":")
