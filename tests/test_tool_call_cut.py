"""A forced tool call cut by the token limit is reported as cut in every dialect: finish or
stop reason `length` / `max_tokens`, the arguments as far as they were written (never a
made-up `{}`), and no piece of the call in the content. Anthropic's `input` and Ollama's
`arguments` are objects, so there a call cut before its arguments were whole is left out.

End to end, the same forced call is asked for with the token limit at several points inside
it (greedy decoding: each cut answer is a prefix of the whole one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from weather_tool import ANTHROPIC_WEATHER, NAME, RESPONSES_WEATHER, WEATHER_TOOL

from runner.chat.output import ChatOutputParser, parse_chat_output
from runner.chat.toolcalls import GEMMA, HERMES, StreamingToolParser

MODEL = "ai/gemma3"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CUTS = (2, 4, 6, 8, 10, 12, 14, 16, 18)


# -- the parser ---------------------------------------------------------------------------


def deltas(fmt: Any, text: str, pieces: int = 1) -> tuple[list[Any], set[int]]:
    parser = StreamingToolParser(fmt)
    step = max(1, len(text) // pieces)
    out = [d for i in range(0, len(text), step) for d in parser.feed(text[i : i + step])]
    return out + parser.finish(), parser.cut_calls


@pytest.mark.parametrize("pieces", [1, 7])
def test_a_call_cut_inside_its_arguments_keeps_them_as_written(pieces: int) -> None:
    text = '```tool_call\n{"name": "get_weather", "arguments": {"city": "Par'
    out, cut = deltas(GEMMA, text, pieces)
    assert cut == {0}
    assert out[0].name == "get_weather"
    assert "".join(d.arguments for d in out) == '{"city": "Par'


@pytest.mark.parametrize(
    "text",
    [
        '```tool_call\n{"name": "get_weather"',  # name written, arguments not begun
        '```tool_call\n{"name": "get_weather", "argu',
    ],
)
def test_a_call_cut_before_its_arguments_has_none_invented(text: str) -> None:
    out, cut = deltas(GEMMA, text)
    assert cut == {0} and len(out) == 1
    assert out[0].name == "get_weather" and out[0].arguments == ""


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (GEMMA, '```tool_call\n{"name": "get_wea'),
        (GEMMA, "```tool_call\n{"),
        (GEMMA, '{"name": "get_weather'),  # a bare call, cut in its name
        (HERMES, '<tool_call>\n{"name": "get_'),
    ],
)
def test_a_call_cut_before_its_name_is_neither_a_call_nor_content(fmt: Any, text: str) -> None:
    out, cut = deltas(fmt, text)
    assert out == [] and cut == set()


def test_a_whole_call_is_not_cut_and_an_empty_one_still_gets_its_object() -> None:
    out, cut = deltas(GEMMA, '```tool_call\n{"name": "get_weather", "arguments": {"city": "X"}}')
    assert cut == set() and out[0].arguments == '{"city": "X"}'
    out, cut = deltas(GEMMA, '```tool_call\n{"name": "now"}\n```')
    assert cut == set() and "".join(d.arguments for d in out) == "{}"  # whole, no arguments


def test_a_forced_call_cut_inside_its_opening_marker_leaves_no_content() -> None:
    parser = StreamingToolParser(GEMMA, calls_forced=True)
    assert parser.feed("```tool") + parser.finish() == []
    free = StreamingToolParser(GEMMA)  # free text may well end with a code fence
    assert "".join(d.text for d in free.feed("Done.\n```") + free.finish()) == "Done.\n```"


def test_the_whole_answer_says_which_calls_were_cut() -> None:
    text = 'Sure.\n```tool_call\n{"name": "get_weather", "arguments": {"ci'
    answer = parse_chat_output(text, ChatOutputParser(GEMMA))
    assert answer.content == "Sure."
    assert answer.cut_calls == {0}
    assert answer.tool_calls[0]["function"]["arguments"] == '{"ci'


# -- through the server, each dialect with its own client ---------------------------------


@pytest.fixture(scope="module")
def oa(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", timeout=120, max_retries=0)


def chat(oa: openai.OpenAI, max_tokens: int) -> Any:
    return oa.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required",
        max_tokens=max_tokens, temperature=0,
    ).choices[0]  # fmt: skip


def whole_arguments(oa: openai.OpenAI) -> str:
    choice = chat(oa, 80)
    assert choice.finish_reason == "tool_calls"
    return choice.message.tool_calls[0].function.arguments


def assert_no_call_in(text: str | None) -> None:
    assert not text or ("```" not in text and "name" not in text and "{" not in text), text


def test_openai_chat_reports_a_cut_call_as_cut(oa: openai.OpenAI) -> None:
    whole = whole_arguments(oa)
    cut = 0
    for n in CUTS:
        choice = chat(oa, n)
        if choice.finish_reason != "length":
            continue  # the call fit
        cut += 1
        assert_no_call_in(choice.message.content)
        for call in choice.message.tool_calls or []:
            assert call.function.name == NAME
            assert whole.startswith(call.function.arguments), (n, call.function.arguments)
    assert cut >= 3  # most limits fall inside the call


def test_openai_chat_stream_reports_a_cut_call_as_cut(oa: openai.OpenAI) -> None:
    whole = whole_arguments(oa)
    cut = 0
    for n in CUTS[::2]:
        stream = oa.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required",
            max_tokens=n, temperature=0, stream=True,
        )  # fmt: skip
        content, arguments, reason = "", "", None
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            content += delta.content or ""
            for call in delta.tool_calls or []:
                arguments += call.function.arguments or ""
            reason = chunk.choices[0].finish_reason or reason
        if reason == "length":
            cut += 1
            assert_no_call_in(content)
            assert whole.startswith(arguments), (n, arguments)
    assert cut >= 2


def test_responses_report_a_cut_call_as_incomplete(oa: openai.OpenAI) -> None:
    whole = whole_arguments(oa)
    cut = 0
    for n in CUTS:
        response = oa.responses.create(
            model=MODEL, input=ASK, tools=[RESPONSES_WEATHER], tool_choice="required",
            max_output_tokens=n, temperature=0,
        )  # fmt: skip
        if response.status != "incomplete":
            continue
        cut += 1
        assert response.incomplete_details.reason == "max_output_tokens"
        for item in response.output:
            if item.type == "message":
                assert_no_call_in("".join(getattr(c, "text", "") for c in item.content))
            elif item.type == "function_call":
                assert whole.startswith(item.arguments), (n, item.arguments)
    assert cut >= 3


def whole_objects(
    ask: Callable[[int], tuple[str, list[dict[str, Any]], str]], whole: str, stop: str
) -> None:
    """Over the cuts: a cut answer (`stop` reason) holds only calls with the whole object."""
    expected = json.loads(whole)
    cut = 0
    for n in CUTS:
        reason, calls, text = ask(n)
        if reason != stop:
            continue
        cut += 1
        assert_no_call_in(text)
        for arguments in calls:
            assert arguments == expected, (n, arguments)
    assert cut >= 3


def test_anthropic_reports_a_cut_call_as_max_tokens(server: Any, oa: openai.OpenAI) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)

    def ask(n: int) -> tuple[str, list[dict[str, Any]], str]:
        message = client.messages.create(
            model=MODEL, max_tokens=n, tools=[ANTHROPIC_WEATHER], messages=ASK,
            tool_choice={"type": "any"}, temperature=0,
        )  # fmt: skip
        calls = [b.input for b in message.content if b.type == "tool_use"]
        text = "".join(b.text for b in message.content if b.type == "text")
        return message.stop_reason, calls, text

    whole_objects(ask, whole_arguments(oa), "max_tokens")


def test_ollama_reports_a_cut_call_as_length(server: Any, oa: openai.OpenAI) -> None:
    # Ollama's client has no tool_choice (runner's extension forces the call): the request
    # goes over plain HTTP and the answer is read with the client's own response model.
    def ask(n: int) -> tuple[str, list[dict[str, Any]], str]:
        body = {
            "model": MODEL, "messages": ASK, "tools": [WEATHER_TOOL], "stream": False,
            "tool_choice": "required", "options": {"num_predict": n, "temperature": 0},
        }  # fmt: skip
        reply = httpx.post(server.url + "/api/chat", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        response = ollama.ChatResponse.model_validate(reply.json())
        calls = [dict(c.function.arguments) for c in response.message.tool_calls or []]
        return response.done_reason, calls, response.message.content

    whole_objects(ask, whole_arguments(oa), "length")
