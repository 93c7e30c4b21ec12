"""Errors answered without runner's app (the cluster front door's): `dialect_errors`'
`error_response` and `stream_error_event` give what runner's own routes give, and the front
door's `Relay` uses them for an answer whose replica died. The cluster itself is exercised in
test_cluster.py; here the helpers and the relay's choices, no Ray cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from runner.api.anthropic.stream import _event as anthropic_event
from runner.api.core.sse import sse_event as openai_event
from runner.api.errors.renderers import (
    anthropic_body,
    error_response,
    is_stream,
    ollama_body,
    stream_error_event,
)
from runner.api.errors.table import ErrorInfo, openai_body
from runner.api.ollama.stream import line as ollama_line

INFO = ErrorInfo(502, "replica_failed", "the replica serving this request failed")
BUSY = ErrorInfo(503, "replica_unavailable", "no replica could take the request: gone")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", openai_body),
        ("/v1/responses", openai_body),
        ("/engines/status", openai_body),
        ("/api/chat", ollama_body),
        ("/v1/messages", anthropic_body),
        ("/v1/messages/count_tokens", anthropic_body),
        ("/anthropic/v1/messages", anthropic_body),
    ],
)
def test_error_response_is_in_the_dialect_of_the_path(path: str, body: Any) -> None:
    for info in (INFO, BUSY, ErrorInfo(413, "request_too_large", "too big")):
        status, raw = error_response(path, info)
        assert status == info.status
        assert json.loads(raw) == body(info)


def test_anthropic_error_types_follow_the_status() -> None:
    assert json.loads(error_response("/v1/messages", INFO)[1])["error"]["type"] == "api_error"
    assert json.loads(error_response("/v1/messages", BUSY)[1])["error"]["type"] == "overloaded_error"  # fmt: skip
    too_big = ErrorInfo(413, "request_too_large", "too big")
    assert json.loads(error_response("/v1/messages", too_big)[1]) == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "too big"},
    }


def test_stream_error_events_are_the_dialects_own() -> None:
    """Byte for byte what runner's own streams send when they fail."""
    sse = "text/event-stream; charset=utf-8"
    assert stream_error_event("/v1/chat/completions", sse, INFO) == openai_event(openai_body(INFO)).encode()  # fmt: skip
    anthropic = anthropic_event("error", {"error": anthropic_body(INFO)["error"]}).encode()
    assert stream_error_event("/v1/messages", sse, INFO) == anthropic
    assert anthropic.startswith(b"event: error\r\ndata: {")
    ndjson = "application/x-ndjson"
    assert stream_error_event("/api/chat", ndjson, INFO) == ollama_line(ollama_body(INFO))
    assert json.loads(stream_error_event("/api/generate", ndjson, INFO) or b"") == {
        "error": INFO.message
    }
    assert stream_error_event("/v1/chat/completions", "application/json", INFO) is None
    assert is_stream(sse) and is_stream(ndjson) and not is_stream("application/json")


# ----- the front door's relay -------------------------------------------------------------


def _start(content_type: bytes) -> dict[str, Any]:
    headers = [(b"content-type", content_type), (b"x-runner-replica", b"r1")]
    return {"type": "http.response.start", "status": 200, "headers": headers}


def _body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def _relay(path: str, batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What the client gets when the replica sends `batches` and then dies."""
    frontdoor = pytest.importorskip("runner.cluster.frontdoor")
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        relay = frontdoor.Relay(send, path)
        for batch in batches:
            await relay.pass_on(batch)
        await relay.end_broken(RuntimeError("replica died"))

    asyncio.run(run())
    return sent


def _client_view(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], bytes]:
    assert sent[0]["type"] == "http.response.start"
    assert all(m["type"] == "http.response.body" for m in sent[1:])
    assert sent[-1]["more_body"] is False
    body = b"".join(m["body"] for m in sent[1:])
    return sent[0]["status"], dict(sent[0]["headers"]), body


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", openai_body(INFO)),
        ("/api/chat", ollama_body(INFO)),
        ("/v1/messages", anthropic_body(INFO)),
    ],
)
def test_replica_dying_before_a_non_stream_body_gives_a_502(path: str, expected: Any) -> None:
    """The headers of a JSON answer wait for its body, so a death between them is an error
    response in the path's dialect, not a 200 with no body."""
    status, headers, body = _client_view(_relay(path, [[_start(b"application/json")]]))
    assert status == 502
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    assert json.loads(body) == expected


def test_non_stream_answer_passes_through_whole() -> None:
    frontdoor = pytest.importorskip("runner.cluster.frontdoor")
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        relay = frontdoor.Relay(send, "/api/chat")
        await relay.pass_on([_start(b"application/json")])
        assert sent == []  # held until the body comes
        await relay.pass_on([_body(b'{"done":true}', more=False)])
        await relay.flush()

    asyncio.run(run())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b'{"done":true}'


@pytest.mark.parametrize(
    ("path", "content_type", "first", "last"),
    [
        ("/v1/chat/completions", b"text/event-stream; charset=utf-8", b"data: {}\r\n\r\n",
         openai_event(openai_body(INFO)).encode()),
        ("/v1/messages", b"text/event-stream; charset=utf-8", b"event: ping\r\ndata: {}\r\n\r\n",
         anthropic_event("error", {"error": anthropic_body(INFO)["error"]}).encode()),
        ("/api/chat", b"application/x-ndjson", b'{"done":false}\n',
         ollama_line(ollama_body(INFO))),
    ],
)  # fmt: skip
def test_stream_cut_off_by_a_dead_replica_ends_with_its_error_event(
    path: str, content_type: bytes, first: bytes, last: bytes
) -> None:
    sent = _relay(path, [[_start(content_type)], [_body(first)]])
    status, headers, body = _client_view(sent)
    assert status == 200 and headers[b"content-type"] == content_type
    assert body == first + last
    # A stream's headers go out at once, before its first event.
    assert _client_view(_relay(path, [[_start(content_type)]]))[2] == last
