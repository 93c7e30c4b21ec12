"""Tool calling and reasoning end to end: real clients (openai SDK, LangChain, OpenAI Agents
SDK) against `runner serve` with the bundled base model. Calls are forced (tool_choice
required / named), since a base model does not decide to call tools on its own; what is
asserted is structure and schema validity, not wording."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from weather_tool import WEATHER_TOOL

from runner.chat import template_for
from runner.chat.tools import parse_tools, render

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "ai/gemma3"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class GetWeather(BaseModel):
    """Current weather for a city."""

    # Bounded, so a forced call always completes within max_tokens whatever the model
    # writes (a base model may otherwise ramble inside an open string).
    city: str = Field(max_length=24)
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=120, max_retries=0)


def test_openai_pydantic_tool_required(client: openai.OpenAI) -> None:
    resp = client.chat.completions.parse(
        model=MODEL,
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        max_tokens=80,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)
    GetWeather.model_validate_json(call.function.arguments)


def test_openai_pydantic_tool_required_streamed(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        max_tokens=80,
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    argument_deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(argument_deltas) > 2  # the arguments arrive in pieces
    assert not [e for e in events if e.type == "content.delta"]  # no markup leaks as content
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_raw_stream_delta_shape(server) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 60,
        "stream": True,
    }
    deltas = []
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                deltas.append(json.loads(line[6:])["choices"][0])
    calls = [c["delta"]["tool_calls"][0] for c in deltas if c["delta"].get("tool_calls")]
    first, rest = calls[0], calls[1:]
    assert first["index"] == 0 and first["type"] == "function" and first["id"]
    assert first["function"]["name"] == "get_weather"
    assert all(
        set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in rest
    )
    arguments = json.loads("".join(c["function"]["arguments"] for c in calls))
    assert isinstance(arguments["city"], str)
    assert deltas[-1]["finish_reason"] == "tool_calls"
    assert not any(c["delta"].get("content") for c in deltas)


def test_langchain_bind_tools(server) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: Annotated[str, Field(max_length=24)]) -> str:
        """Current weather for a city."""
        return f"Sunny in {city}"

    llm = ChatOpenAI(
        model=MODEL, base_url=server.base_url, api_key="unused", max_tokens=60, max_retries=0
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(ASK[0]["content"])
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str)
    assert get_weather.invoke(call["args"]).startswith("Sunny in")


def test_agents_sdk_runs_a_function_tool(server) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # offline: no trace export
    ran: list[str] = []

    @function_tool
    def get_weather(city: Annotated[str, Field(max_length=24)]) -> str:
        """Current weather for a city."""
        ran.append(city)
        return f"Sunny, 21C in {city}"

    model = OpenAIChatCompletionsModel(
        model=MODEL,
        openai_client=openai.AsyncOpenAI(base_url=server.base_url, api_key="unused"),
    )
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=model,
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required", max_tokens=60),
        # A base model cannot be trusted to phrase an answer after the tool; the turn ends
        # with the tool's result as the agent's answer.
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, ASK[0]["content"], max_turns=2)
    assert len(ran) == 1
    assert result.final_output == f"Sunny, 21C in {ran[0]}"


def test_tool_result_round_trip_renders_into_the_prompt(client: openai.OpenAI, server) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=60
    )
    call = first.choices[0].message.tool_calls[0]
    conversation = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=conversation, tools=[WEATHER_TOOL], max_tokens=4
    )
    template = template_for("gemma3", None, None)  # the bundled model has no template
    text = render(template, conversation, parse_tools([WEATHER_TOOL]), template.tool_format)
    assert "```tool_result\nSunny, 21C\n```" in text
    # The call is rendered as the template writes JSON, whatever spacing the model chose.
    assert json.dumps(json.loads(call.function.arguments), ensure_ascii=False) in text
    tokens = httpx.post(
        server.url + "/tokenize", json={"model": MODEL, "content": text, "add_special": True}
    ).json()["tokens"]
    assert second.usage.prompt_tokens == len(tokens)


def test_tool_choice_none_renders_tools_but_makes_no_calls(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    none = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=4
    )
    assert none.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason in ("length", "stop")  # a sample may end early


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools"),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "unknown"}},
            },
            "tool_choice",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "string", "pattern": "a{5000}"},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, None),
    ],
)
def test_bad_tools_are_openai_shaped_400s(client: openai.OpenAI, extra, param) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, **extra)
    assert err.value.status_code == 400
    body = err.value.body
    assert body["type"] == "invalid_request_error" and body["message"]
    if param is not None:
        assert body["param"] == param


THINKING = 'root ::= "<think>" [a-z ]{4,40} "</think>" [a-z ]{2,20}'


def test_reasoning_content_split(client: openai.OpenAI) -> None:
    # The bundled model does not think on its own; a grammar makes it write a thought.
    extra = {"grammar": THINKING}
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=80, extra_body=extra
    )
    message = resp.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning
    assert "think>" not in message.content
    inline = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=80, extra_body={**extra, "reasoning_format": "none"}
    )
    assert inline.choices[0].message.content.startswith("<think>")
    assert "reasoning_content" not in (inline.choices[0].message.model_extra or {})
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=80, stream=True, extra_body=extra
    )
    chunks = [c.choices[0].delta for c in stream if c.choices]
    streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in chunks)
    content = "".join(d.content or "" for d in chunks)
    assert streamed and "think>" not in streamed + content


def test_thinking_budget_ends_the_thought(client: openai.OpenAI, server) -> None:
    # The answer starts with a letter: spaces alone would be stripped to an empty answer.
    unbounded = 'root ::= "<think>" [a-z ]+ "</think>" [a-z] [a-z ]{1,19}'
    resp = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=120,
        extra_body={"grammar": unbounded, "reasoning_budget": 6, "ignore_eos": False},
    )
    message = resp.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    n = len(
        httpx.post(server.url + "/tokenize", json={"model": MODEL, "content": reasoning}).json()[
            "tokens"
        ]
    )
    assert 1 <= n <= 6 + 2  # token boundaries may differ by a little when re-tokenized
    assert message.content  # the answer goes on after the forced </think>


def test_auto_choice_runs_with_a_lazy_call_grammar(client: openai.OpenAI) -> None:
    # The bundled model's greedy answer repeats the prompt's prose, not its call example, so
    # the lazy grammar stays idle: free text comes back, and nothing is taken for a call.
    # (A sampled answer may copy the example's fence or bare JSON call and so be a call.)
    resp = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        max_tokens=8,
        temperature=0,
    )
    choice = resp.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert choice.message.tool_calls is None and isinstance(choice.message.content, str)


def test_configure_tool_format_and_reasoning_format(
    start_server, bundled_model_path, tmp_path_factory
) -> None:
    from server_proc import MODEL as PRIVATE
    from server_proc import private_store, running

    store = private_store(tmp_path_factory.mktemp("tools") / "models", bundled_model_path)
    with running(start_server, store) as own, httpx.Client(base_url=own.url, timeout=120) as c:
        bad = c.post("/engines/_configure", json={"model": PRIVATE, "tool-format": "xml"})
        assert bad.status_code == 400 and "tool-format" in bad.text
        r = c.post(
            "/engines/_configure",
            json={"model": PRIVATE, "tool-format": "hermes", "reasoning-format": "none"},
        )
        assert r.status_code == 202, r.text
        conversation = [
            *ASK,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ]
        body = {"model": PRIVATE, "messages": conversation, "tools": [WEATHER_TOOL]}
        resp = c.post(
            "/v1/chat/completions",
            json={**body, "tool_choice": "required", "max_tokens": 60, "grammar": None},
        ).json()
        assert resp["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        template = template_for("gemma3", None, None, tool_format="hermes")
        text = render(template, conversation, parse_tools([WEATHER_TOOL]), template.tool_format)
        assert '<tool_call>\n{"name": "get_weather"' in text
        tokens = c.post(
            "/tokenize", json={"model": PRIVATE, "content": text, "add_special": True}
        ).json()["tokens"]
        assert resp["usage"]["prompt_tokens"] == len(tokens)
        thought = c.post(
            "/v1/chat/completions",
            json={"model": PRIVATE, "messages": ASK, "max_tokens": 40, "grammar": THINKING},
        ).json()["choices"][0]["message"]
        assert thought["content"].startswith("<think>") and "reasoning_content" not in thought
