"""OpenAI's Responses API driven by the official `openai` client against `runner serve` with
the bundled model: create (streamed and not), stored responses that survive a restart,
`previous_response_id` hitting the prompt cache after the restart, retrieve, input_items,
delete, and errors in OpenAI's shape."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from conftest import ServerHandle
from server_proc import MODEL
from weather_tool import RESPONSES_WEATHER as WEATHER


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., ServerHandle], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    env = {"RUNNER_RESPONSES_DIR": str(tmp_path_factory.mktemp("responses"))}
    handle = start_server("--slots", "2", "--ctx-size", "2048", "--model", MODEL, env=env)
    yield handle
    handle.stop()


def client_of(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_conversation_continues_after_restart_from_the_cache(server: ServerHandle) -> None:
    client = client_of(server)
    # Long enough (~150 tokens) for its KV state to be kept on disk across the restart.
    instructions = f"[{secrets.token_hex(8)}] " + "You answer briefly and plainly. " * 25
    # Greedy where text is checked: a sampled answer may end at its first token (no text).
    first = client.responses.create(
        model=MODEL,
        instructions=instructions,
        input="Name a colour.",
        max_output_tokens=6,
        temperature=0,
    )
    assert first.object == "response" and first.id.startswith("resp_")
    assert first.status in ("completed", "incomplete")
    assert first.output[0].type == "message" and first.output_text
    assert 1 <= first.usage.output_tokens <= 6
    assert first.usage.input_tokens > 100

    events = list(
        client.responses.create(
            model=MODEL, input="Say hi.", max_output_tokens=4, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in kinds
    done = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert [k for k in kinds if k in done] == done
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = events[-1].response
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == streamed.output_text
    assert client.responses.retrieve(streamed.id).output_text == streamed.output_text

    server.restart()
    client = client_of(server)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(
        model=MODEL,
        instructions=instructions,
        previous_response_id=first.id,
        input="And another one?",
        max_output_tokens=6,
    )
    assert second.previous_response_id == first.id
    # The first turn's prompt comes back from the prompt cache's disk tier.
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 100

    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text == "And another one?"

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_text_format_json_schema(server: ServerHandle) -> None:
    fmt = {"type": "json_schema", "name": "answer", "schema": {"type": "boolean"}}
    response = client_of(server).responses.create(
        model=MODEL, input="Is the sky blue?", max_output_tokens=8, text={"format": fmt}
    )
    assert isinstance(json.loads(response.output_text), bool)
    assert response.status == "completed"


def test_errors_in_openai_shape(server: ServerHandle) -> None:
    client = client_of(server)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    assert err.value.body["code"] == "previous_response_not_found"
    bad_calls = [
        dict(model=MODEL, input="x", temperature=9),
        dict(model=MODEL, input=[{"type": "bogus"}]),
        dict(model=MODEL, input="x", max_output_tokens=0),
        dict(model=MODEL, input="x", text={"format": "json"}),
        dict(model=MODEL, input=[{"type": "function_call_output", "call_id": "call_1"}]),
        dict(model=MODEL, input=[{"type": "function_call", "call_id": "c", "arguments": "{}"}]),
    ]
    for kwargs in bad_calls:
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(**kwargs)
        assert err.value.body["type"] == "invalid_request_error" and err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")

    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    for path in ("/v1/responses/../../etc/passwd", "/v1/responses/resp_nope/input_items"):
        response = httpx.get(server.url + path)
        assert response.status_code == 404 and "error" in response.json()


def test_function_call_round_trip(server: ServerHandle) -> None:
    client = client_of(server)
    ask = "What is the weather in Paris?"
    # Forced, since a base model does not decide to call tools on its own.
    first = client.responses.create(
        model=MODEL, input=ask, tools=[WEATHER], tool_choice="required", max_output_tokens=60
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and len(calls) == 1
    assert calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)

    output = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny"}
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, input=[output], tools=[WEATHER],
        max_output_tokens=4,
    )  # fmt: skip
    assert second.usage.input_tokens_details.cached_tokens > 0
    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["function_call_output"]

    named = {"type": "function", "name": "get_weather"}
    events = list(
        client.responses.create(
            model=MODEL,
            input=ask,
            tools=[WEATHER],
            tool_choice=named,
            max_output_tokens=60,
            stream=True,
        )  # fmt: skip
    )
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and isinstance(json.loads(done[0].arguments)["city"], str)
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].type == "function_call"


def test_input_items_pages(server: ServerHandle) -> None:
    client = client_of(server)
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    response = client.responses.create(model=MODEL, input=turns, max_output_tokens=2)

    def texts(page: object) -> list[str]:
        return [item.content[0].text for item in page.data]  # type: ignore[attr-defined]

    assert texts(client.responses.input_items.list(response.id)) == ["c", "b", "a"]
    first = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert texts(first) == ["a", "b"] and first.has_more
    rest = client.responses.input_items.list(response.id, order="asc", limit=2, after=first.last_id)
    assert texts(rest) == ["c"] and not rest.has_more
    # `before` (in OpenAI's API reference; this SDK version has no parameter for it)
    back = client.responses.input_items.list(
        response.id, order="asc", limit=1, extra_query={"before": rest.first_id}
    )
    assert texts(back) == ["b"]
