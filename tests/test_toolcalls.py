"""Tool-call parsing per family, streamed at every split point; tools, choices, grammars and
rendering through chat templates written in each family's documented format."""

from __future__ import annotations

import json

import pytest

from runner.chat import template_for, validate_gbnf
from runner.chat.output import ChatOutputParser, parse_chat_output
from runner.chat.reasoning import ReasoningDelta
from runner.chat.toolcalls import (
    FORMATS,
    GEMMA,
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ContentDelta,
    StreamingToolParser,
    ToolCallDelta,
    detect_format,
    parse_tool_calls,
)
from runner.chat.toolcalls.stream import collect_deltas
from runner.chat.tools import (
    ToolChoice,
    ToolError,
    build_tool_grammar,
    parse_tool_choice,
    parse_tools,
    render,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

# (format, model output, expected content, expected [(name, arguments object)])
CASES = [
    (
        HERMES,
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>',
        "Let me check.",
        [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})],
    ),
    (
        HERMES,
        '<tool_call>{"arguments": {"q": "a \\"}</tool_call>\\" b"}, "name": "search"}</tool_call>',
        None,
        [("search", {"q": 'a "}</tool_call>" b'})],
    ),
    (
        LLAMA3,
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": [1, 2]}}',
        None,
        [("get_weather", {"city": "Paris", "days": [1, 2]})],
    ),
    (
        LLAMA3,
        '<|python_tag|>{"type": "function", "name": "a", "parameters": {}}; '
        '{"name": "b", "parameters": {"x": null}}',
        None,
        [("a", {}), ("b", {"x": None})],
    ),
    (LLAMA3, '{"answer": 42} is my reply', '{"answer": 42} is my reply', []),
    (
        MISTRAL,
        '[TOOL_CALLS][{"name": "a", "arguments": {"n": 1}}, {"name": "b", "arguments": {}}]',
        None,
        [("a", {"n": 1}), ("b", {})],
    ),
    (
        MISTRAL,
        'Sure [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]b[ARGS]{"k": [true]}',
        "Sure",
        [("get_weather", {"city": "Paris"}), ("b", {"k": [True]})],
    ),
    (
        GEMMA,
        'Checking.\n```tool_call\n{"name": "get_weather", "arguments": {"city": "```"}}\n```',
        "Checking.",
        [("get_weather", {"city": "```"})],
    ),
    (GEMMA, "Code:\n```python\nprint(1)\n```", "Code:\n```python\nprint(1)\n```", []),
    (  # what instruction-tuned Gemmas often write instead of the fence
        GEMMA,
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        None,
        [("get_weather", {"city": "Paris"})],
    ),
    (
        GENERIC,
        '{"name": "f", "arguments": "{\\"a\\": 1}"}\n{"name": "g"}',
        None,
        [("f", {"a": 1}), ("g", {})],
    ),
    (GENERIC, "no calls <here> at {all}", "no calls <here> at {all}", []),
    (GENERIC, ' [1, {"a": 2}] ', ' [1, {"a": 2}] ', []),
    (LLAMA3, '[{"x": 1}]', '[{"x": 1}]', []),
    (
        MISTRAL,  # the [TOOL_CALLS] special token does not show in the text
        '[{"name": "a", "arguments": {"n": 1}}]',
        None,
        [("a", {"n": 1})],
    ),
    (HERMES, "a < b and <tool but no call", "a < b and <tool but no call", []),
]


def _summary(content: str | None, calls: list[dict]) -> tuple:
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def _stream(fmt, pieces: list[str]) -> list:
    parser = StreamingToolParser(fmt)
    deltas = []
    for piece in pieces:
        deltas += parser.feed(piece)
    return deltas + parser.finish()


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES)
def test_whole_answer(fmt, text, content, calls) -> None:
    parsed = parse_tool_calls(text, fmt)
    assert _summary(parsed.content, parsed.tool_calls) == (content, calls)
    for call in parsed.tool_calls:
        assert call["type"] == "function" and call["id"].startswith("call_")


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES)
def test_streamed_split_at_every_boundary(fmt, text, content, calls) -> None:
    expected = (content, calls)
    for cut in range(len(text) + 1):
        for pieces in ([text[:cut], text[cut:]], [text[:cut], *text[cut:]]):
            deltas = _stream(fmt, pieces)
            parsed = collect_deltas(deltas)
            assert _summary(parsed.content, parsed.tool_calls) == expected, (cut, pieces)
            streamed = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
            for marker in (*fmt.starts, *fmt.ends):  # no markup leaks into content
                if calls and marker:
                    assert marker not in streamed


def test_stream_shape_name_once_then_argument_fragments() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    deltas = _stream(HERMES, list(text))
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    first, rest = calls[0], calls[1:]
    assert (first.index, first.name) == (0, "get_weather") and first.id
    assert all(d.name is None and d.id is None and d.index == 0 for d in rest)
    assert len(rest) > 3  # arguments arrive in pieces, not at the end
    assert "".join(d.arguments for d in calls) == '{"city": "Paris"}'
    assert first.to_openai()["type"] == "function"
    assert "id" not in rest[0].to_openai()


def test_truncated_call_keeps_what_was_written() -> None:
    parsed = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"a": 1', HERMES)
    assert parsed.tool_calls[0]["function"] == {"name": "f", "arguments": '{"a": 1'}


def test_reasoning_split_streamed_and_whole() -> None:
    text = "<think>\nLet me think about it.\n</think>\n\nThe answer is 4."
    whole = parse_chat_output(text, ChatOutputParser())
    assert (whole.reasoning, whole.content) == ("\nLet me think about it.\n", "The answer is 4.")
    for cut in range(len(text) + 1):
        parser = ChatOutputParser()
        deltas = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.finish()
        reasoning = "".join(d.text for d in deltas if isinstance(d, ReasoningDelta))
        content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
        assert (reasoning, content) == (whole.reasoning, whole.content), cut
    inline = parse_chat_output(text, ChatOutputParser(split_reasoning=False))
    assert inline.content == text and inline.reasoning is None
    opened = parse_chat_output("thought</think>answer", ChatOutputParser(reasoning_open=True))
    assert (opened.reasoning, opened.content) == ("thought", "answer")


def test_tool_call_after_reasoning_is_parsed() -> None:
    text = '<think>call it</think><tool_call>{"name": "f", "arguments": {}}</tool_call>'
    answer = parse_chat_output(text, ChatOutputParser(HERMES))
    assert answer.reasoning == "call it" and answer.content is None
    assert answer.tool_calls[0]["function"]["name"] == "f"


# ----- tools, tool_choice, grammars ----------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "match"),
    [
        ("nope", "must be a list"),
        ([{"type": "retrieval"}], "type 'function'"),
        ([{"type": "function"}], "function must be an object"),
        ([{"type": "function", "function": {"name": "bad name!"}}], "function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "JSON schema"),
        ([WEATHER, WEATHER], "used twice"),
    ],
)
def test_invalid_tools(tools, match) -> None:
    with pytest.raises(ToolError, match=match):
        parse_tools(tools)


def test_tool_choice() -> None:
    tools = parse_tools([WEATHER])
    assert parse_tool_choice(None, tools) == ToolChoice("auto")
    assert parse_tool_choice(None, []) == ToolChoice("none")
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert parse_tool_choice(named, tools) == ToolChoice("required", "get_weather")
    with pytest.raises(ToolError, match="not in tools") as err:
        parse_tool_choice({"type": "function", "function": {"name": "other"}}, tools)
    assert err.value.param == "tool_choice"
    with pytest.raises(ToolError, match="needs tools"):
        parse_tool_choice("required", [])


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_grammars_compile_for_every_family(fmt) -> None:
    nested = {
        "type": "function",
        "function": {
            "name": "plan",
            "parameters": {
                "type": "object",
                "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}}},
                "required": ["steps"],
                "$defs": {"Step": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            },
        },
    }
    tools = parse_tools([WEATHER, nested])
    for choice in (ToolChoice("required"), ToolChoice("required", "plan"), ToolChoice("auto")):
        for parallel in (False, True):
            grammar = build_tool_grammar(tools, choice, fmt, parallel)
            if grammar is None:
                assert choice.mode == "auto" and fmt.trigger is None
                continue
            assert grammar.lazy == (choice.mode == "auto")
            validate_gbnf(grammar.gbnf)
    assert build_tool_grammar(tools, ToolChoice("none"), fmt) is None


def test_detect_format() -> None:
    assert detect_format("{{ '<tool_call>' }}") is HERMES
    assert detect_format("[TOOL_CALLS] {{ x }}") is MISTRAL
    assert detect_format("<|start_header_id|>") is LLAMA3
    assert detect_format("<start_of_turn>") is GEMMA
    assert detect_format("", "gemma3") is GEMMA
    assert detect_format("{{ messages }}") is GENERIC
    assert detect_format("<tool_call>", override="llama3") is LLAMA3
    assert template_for("gemma3", None, None).tool_format is GEMMA
    assert template_for("gemma3", None, None, tool_format="hermes").tool_format is HERMES


# ----- rendering through templates in each family's documented style ------------------------

# Abridged from the published Hermes/Qwen 2.5 template: tools in <tools>, calls in
# <tool_call>, results in <tool_response> inside a user turn.
QWEN_STYLE = """\
{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
{%- set tool_call = tool_call.function %}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?", "some_client_key": {"x": 1}},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
]


def test_gguf_style_template_gets_tools_calls_and_results() -> None:
    template = template_for("qwen2", QWEN_STYLE, None)
    assert template.tool_format is HERMES
    text = render(template, CONVERSATION, parse_tools([WEATHER]), template.tool_format)
    assert '"name": "get_weather"' in text.split("</tools>")[0]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert "<tool_response>\n18C and sunny\n</tool_response>" in text


@pytest.mark.parametrize("arch", ["gemma3", "qwen2", "llama"])
def test_builtin_templates_render_tools_calls_and_results(arch: str) -> None:
    bos = "<|begin_of_text|>" if arch == "llama" else ""
    template = template_for(arch, None, None, bos_token=bos)
    fmt = template.tool_format
    text = render(template, CONVERSATION, parse_tools([WEATHER]), fmt)
    assert "get_weather" in text.split("Weather in Paris?")[0]  # the tools come first
    assert fmt.write_calls(CONVERSATION[1]["tool_calls"]) in text
    assert "18C and sunny" in text
    plain = render(template, CONVERSATION[:1], [], fmt)
    assert "get_weather" not in plain


PLAIN_CHATML = """\
{%- for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_template_without_tool_support_still_gets_tools_calls_and_results() -> None:
    template = template_for("qwen2", PLAIN_CHATML, None)
    fmt = template.tool_format
    assert fmt is HERMES  # ChatML style: Hermes calls
    text = render(template, CONVERSATION, parse_tools([WEATHER]), fmt)
    system, rest = text.split("<|im_end|>", 1)
    assert system.startswith("<|im_start|>system\n") and "get_weather" in system
    assert fmt.write_calls(CONVERSATION[1]["tool_calls"]) in rest
    assert "<|im_start|>user\nTool result:\n18C and sunny" in rest
    # A template that handles tools itself is left alone.
    qwen = template_for("qwen2", QWEN_STYLE, None)
    assert "Tool result:" not in render(qwen, CONVERSATION, parse_tools([WEATHER]), HERMES)


# Abridged from Mistral's v3 tokenizer format: tools in [AVAILABLE_TOOLS] before the user
# turn, calls as a JSON list after [TOOL_CALLS], results in [TOOL_RESULTS].
MISTRAL_STYLE = """\
{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' %}
{%- if tools and loop.first %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif -%}
[INST] {{ message.content }}[/INST]
{%- elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS] [
{%- for call in message.tool_calls -%}
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}, \
"id": "{{ call.id }}"}{% if not loop.last %}, {% endif %}
{%- endfor %}]{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS] {"content": {{ message.content | tojson }}, \
"call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]
{%- else %} {{ message.content }}{{ eos_token }}
{%- endif %}
{%- endfor %}"""

# Abridged from Meta's Llama 3.1 JSON tool calling: the functions in the first user turn,
# a call as {"name", "parameters"}, its result in an `ipython` turn.
LLAMA31_STYLE = """\
{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' and tools and loop.first %}\
<|start_header_id|>user<|end_header_id|>

Given the following functions, respond with a JSON for a function call.
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}
{{ message.content }}<|eot_id|>
{%- elif message.role == 'assistant' and message.tool_calls %}\
<|start_header_id|>assistant<|end_header_id|>

{% for call in message.tool_calls -%}
{"name": "{{ call.function.name }}", "parameters": {{ call.function.arguments | tojson }}}
{%- endfor %}<|eot_id|>
{%- elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""


WEATHER_ARGS = {"city": "Paris"}


@pytest.mark.parametrize(
    ("source", "fmt", "call_text"),
    [
        (LLAMA31_STYLE, LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
        (
            MISTRAL_STYLE,
            MISTRAL,
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, '
            '"id": "call_1"}]',
        ),
    ],
    ids=["llama3.1", "mistral"],
)
def test_family_templates_render_calls_that_parse_back(source, fmt, call_text) -> None:
    template = template_for("llama", source, None, eos_token="</s>")
    assert template.tool_format is fmt
    text = render(template, CONVERSATION, parse_tools([WEATHER]), fmt)
    assert '"name": "get_weather"' in text.split("Weather in Paris?")[0]  # tools come first
    assert call_text in text
    assert "18C and sunny" in text.split(call_text)[1]
    assert "Tool result:" not in text  # the template renders results itself
    # What the model saw as its own earlier call is what the family's parser reads back.
    parsed = parse_tool_calls(call_text, fmt)
    assert _summary(parsed.content, parsed.tool_calls) == (None, [("get_weather", WEATHER_ARGS)])
