"""Prompt caching the client steers, end to end with the real SDKs against `runner serve`:
Anthropic `cache_control` on tools and system blocks (usage written / read per TTL, agreeing
with the engine's `timings`), OpenAI `prompt_cache_key` and `prompt_cache_retention` on Chat
Completions and Responses, the operator's `GET/DELETE /engines/cache`, and a pinned prefix
that survives other users' prompts overflowing the slots and both tiers, an unload and a
restart, while an expired pin is evicted like any entry.

The server's tiers are small (RAM below one pinned entry, disk a few entries) so that
pressure is reached with a few dozen short prompts; pins without a TTL of their own last 3 s
(`RUNNER_CACHE_PIN_TTL`), those with one keep it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import ServerHandle
from server_proc import MODEL
from weather_tool import ANTHROPIC_WEATHER

KEY = "pins-test-key"
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}
SHORT = {"type": "ephemeral"}  # the server's default TTL: 3 s here


def long_system() -> str:
    """A ~300-token system prompt no earlier request can have cached (random nonce first)."""
    return f"[{secrets.token_hex(8)}] You are a careful, concise assistant. " + (
        "Answer in plain words and keep every answer short. " * 30
    )


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerHandle]) -> Iterator[ServerHandle]:
    env = {
        "RUNNER_CACHE_RAM": "2MiB",
        "RUNNER_CACHE_DISK": "48MiB",
        "RUNNER_CACHE_DISK_RESERVE": "0",
        "RUNNER_CACHE_PINS": "0.5",
        "RUNNER_CACHE_PIN_TTL": "3s",
    }
    args = ("--slots", "2", "--ctx-size", "2048", "--model", MODEL, "--api-key", KEY)
    handle = start_server(*args, env=env)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def claude(server: ServerHandle) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def oai(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=300) as client:
        yield client


def pins(http: httpx.Client) -> list[dict[str, Any]]:
    r = http.get("/engines/cache")
    assert r.status_code == 200
    return [pin for model in r.json()["models"] for pin in model["pins"]]


def agrees_with_engine(usage: Any, timings: dict[str, Any]) -> None:
    """Anthropic's usage is the engine's own count: read = cache_n, written + input =
    prompt_n, and the per-TTL split adds up."""
    assert usage.cache_read_input_tokens == timings["cache_n"]
    assert usage.input_tokens + usage.cache_creation_input_tokens == timings["prompt_n"]
    split = usage.cache_creation
    assert split.ephemeral_5m_input_tokens + split.ephemeral_1h_input_tokens == (
        usage.cache_creation_input_tokens
    )


def ask(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}]


def test_anthropic_breakpoints_on_tools_and_system(claude: anthropic.Anthropic) -> None:
    tools = [{**ANTHROPIC_WEATHER, "cache_control": SHORT}]
    system = [{"type": "text", "text": long_system(), "cache_control": ONE_HOUR}]
    common = {"model": MODEL, "max_tokens": 2, "temperature": 0, "tools": tools, "system": system}
    first = claude.messages.create(**common, messages=ask("Weather in Paris?"))
    agrees_with_engine(first.usage, first.model_extra["timings"])
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation.ephemeral_1h_input_tokens > 250  # the system prompt
    counted = claude.messages.count_tokens(
        model=MODEL, tools=tools, system=system, messages=ask("Weather in Paris?")
    )
    usage = first.usage
    total = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    assert total == counted.input_tokens

    # Another question behind the same breakpoints: everything written is read back.
    second = claude.messages.create(**common, messages=ask("Weather in Rome?"))
    agrees_with_engine(second.usage, second.model_extra["timings"])
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens >= usage.cache_creation_input_tokens

    # Streamed: the final message's usage says the same.
    with claude.messages.stream(**common, messages=ask("Weather in Oslo?")) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_creation_input_tokens == 0
    assert final.usage.cache_read_input_tokens >= usage.cache_creation_input_tokens
    counted = claude.messages.count_tokens(
        model=MODEL, tools=tools, system=system, messages=ask("Weather in Oslo?")
    )
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == counted.input_tokens


def test_anthropic_bad_cache_control_is_a_400(claude: anthropic.Anthropic) -> None:
    for control in ({"type": "ephemeral", "ttl": "2h"}, {"type": "persistent"}):
        system = [{"type": "text", "text": "Be brief.", "cache_control": control}]
        with pytest.raises(anthropic.BadRequestError) as caught:
            claude.messages.create(model=MODEL, max_tokens=1, system=system, messages=ask("Hi"))
        assert caught.value.body["type"] == "error"
        assert "cache_control" in caught.value.body["error"]["message"]
    many = [{"type": "text", "text": f"Rule {i}.", "cache_control": SHORT} for i in range(5)]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=MODEL, max_tokens=1, system=many, messages=ask("Hi"))


def test_openai_cache_key_and_24h_retention(oai: openai.OpenAI, http: httpx.Client) -> None:
    system = long_system()
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi."}]
    steer = {"prompt_cache_key": "agent-7", "prompt_cache_retention": "24h"}
    first = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, **steer)
    timings = first.model_extra["timings"]
    assert first.usage.prompt_tokens_details.cached_tokens == timings["cache_n"]
    assert first.usage.prompt_tokens == timings["cache_n"] + timings["prompt_n"]
    day = [p for p in pins(http) if p["ttl"] == 86400]
    assert any(p["tokens"] == first.usage.prompt_tokens - 4 for p in day)  # all a slot keeps

    messages[-1] = {"role": "user", "content": "Hello again."}
    second = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, **steer)
    timings = second.model_extra["timings"]
    assert second.usage.prompt_tokens_details.cached_tokens == timings["cache_n"] > 250

    # Responses: the same fields, the same accounting.
    reply = oai.responses.create(
        model=MODEL, instructions=system, input="Hi there.", max_output_tokens=2, **steer
    )
    timings = reply.model_extra["timings"]
    assert reply.usage.input_tokens_details.cached_tokens == timings["cache_n"] > 250
    assert reply.usage.input_tokens == timings["cache_n"] + timings["prompt_n"]

    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=1, prompt_cache_retention="7d"
        )  # type: ignore[arg-type]


def test_agents_sdk_model_settings(server: ServerHandle, http: httpx.Client) -> None:
    """The openai-agents SDK: `prompt_cache_retention` in `ModelSettings`, the cache key in
    its `extra_args`; the second run reads the agent's instructions back."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # offline: no trace export
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    settings = ModelSettings(
        max_tokens=2, prompt_cache_retention="24h", extra_args={"prompt_cache_key": "agent-9"}
    )
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    agent = Agent(name="pinned", instructions=long_system(), model=model, model_settings=settings)
    before = {p["id"] for p in pins(http)}
    Runner.run_sync(agent, "Hi.", max_turns=1)
    made = [p for p in pins(http) if p["id"] not in before]
    assert len(made) == 1 and made[0]["ttl"] == 86400
    second = Runner.run_sync(agent, "Hello again.", max_turns=1)
    usage = second.context_wrapper.usage
    assert usage.input_tokens_details.cached_tokens > 250
    assert usage.input_tokens_details.cached_tokens < usage.input_tokens


def test_operator_lists_and_drops_pins(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    system = [{"type": "text", "text": long_system(), "cache_control": ONE_HOUR}]
    reply = claude.messages.create(model=MODEL, max_tokens=1, system=system, messages=ask("Hi"))
    written = reply.usage.cache_creation.ephemeral_1h_input_tokens
    pin = max((p for p in pins(http) if p["ttl"] == 3600), key=lambda p: p["expires_at"])
    assert pin["tokens"] >= written > 250  # (a few template tokens may have been cached)
    assert 3500 < pin["ttl_left"] <= 3600 and pin["hits"] == 0
    assert pin["bytes"] > 0 and pin["tier"] in (None, "ram", "disk")
    assert http.delete(f"/engines/cache/pins/{pin['id']}").status_code == 200
    assert all(p["id"] != pin["id"] for p in pins(http))
    assert http.delete(f"/engines/cache/pins/{pin['id']}").status_code == 404
    assert http.delete("/engines/cache/pins/not-a-pin").status_code in (400, 422)


def test_a_pin_outlives_pressure_an_unload_and_a_restart(
    server: ServerHandle, claude: anthropic.Anthropic, http: httpx.Client
) -> None:
    pinned = [{"type": "text", "text": long_system(), "cache_control": ONE_HOUR}]
    expiring = [{"type": "text", "text": long_system(), "cache_control": SHORT}]
    plain = long_system()

    def send(system: Any, question: str) -> anthropic.types.Message:
        return claude.messages.create(
            model=MODEL, max_tokens=1, system=system, messages=ask(question)
        )

    ids = {p["id"] for p in pins(http)}
    mark = send(pinned, "First question.").usage.cache_creation_input_tokens
    assert mark > 250
    (kept,) = {p["id"] for p in pins(http)} - ids
    assert send(expiring, "First question.").usage.cache_creation_input_tokens > 250
    send(plain, "First question.")
    time.sleep(4)  # the short pins' 3 s run out (their entries stay, unpinned)
    assert [p for p in pins(http) if p["ttl"] == 3] == []

    # 20 other users: their prompts overflow both slots, RAM and the disk tier.
    for _ in range(20):
        send(long_system(), "Another user.")

    # Read back, not recomputed (a block past the breakpoint may come too: the questions
    # share the turn's first tokens).
    back = send(pinned, "Second question.")
    assert back.model_extra["timings"]["cache_source"] == "disk"
    assert back.usage.cache_read_input_tokens >= mark
    assert back.usage.cache_creation_input_tokens == 0
    # What was not pinned, or no longer was, is gone: the pressure was real.
    assert send(expiring, "Second question.").usage.cache_read_input_tokens < 64
    assert send(plain, "Second question.").usage.cache_read_input_tokens < 64

    # An unload (what the idle timer does), then a restart: the pin and its TTL remain.
    assert http.post("/engines/unload", json={"all": True}).status_code == 200
    after_unload = send(pinned, "Third question.")
    assert after_unload.usage.cache_read_input_tokens >= mark
    (before,) = [p for p in pins(http) if p["id"] == kept]
    server.restart()
    (after,) = [p for p in pins(http) if p["id"] == kept] or [None]
    assert after is None or after["expires_at"] == before["expires_at"]  # model not loaded yet
    again = send(pinned, "Fourth question.")
    assert again.model_extra["timings"]["cache_source"] == "disk"
    assert again.usage.cache_read_input_tokens >= mark
    (after,) = [p for p in pins(http) if p["id"] == kept]
    assert after["tokens"] == mark and after["hits"] >= 3 and after["ttl_left"] > 3500


def test_past_the_bound_the_oldest_pin_yields_and_the_response_says_so(
    claude: anthropic.Anthropic, http: httpx.Client
) -> None:
    """Pins may hold half the 48 MiB disk tier: about 1,300 tokens of this model's KV, so
    some of eight 300-token pinned prompts must yield, reported in `timings`, never an
    error. (Last in the module: it pushes the earlier tests' pins out.)"""
    ids_before = {p["id"] for p in pins(http)}
    yielded = 0
    for i in range(8):
        system = [{"type": "text", "text": long_system(), "cache_control": ONE_HOUR}]
        reply = claude.messages.create(
            model=MODEL, max_tokens=1, system=system, messages=ask(f"Question {i}.")
        )
        assert reply.usage.cache_creation_input_tokens > 250  # pinned, written
        yielded += reply.model_extra["timings"]["pins_yielded"]
    assert yielded >= 1
    now = pins(http)
    assert len({p["id"] for p in now} - ids_before) + yielded >= 8
    (model,) = http.get("/engines/cache").json()["models"]
    assert 0 < model["pinned"]["pinned_tokens"] * 18 * 1024 <= 24 << 20  # KV: 18 KiB/token
