"""Chat template rendering: built-in fallbacks, GGUF-style templates and hostile templates."""

from __future__ import annotations

import time

import pytest

from runner.chat import (
    BUILTINS,
    ChatTemplate,
    ChatTemplateError,
    RenderLimits,
    normalize_messages,
    template_for,
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]

# The shape of ChatML templates found in GGUF files (e.g. Qwen/Hermes fine-tunes).
GGUF_CHATML = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A few constructs real templates use: tools|tojson, namespace, reverse slicing, loop controls.
GGUF_TOOLS = """\
{%- if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>
{% endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages[::-1] %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}\
{% break %}{% endif %}{% endfor -%}
{%- for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
[{{ m.role }}]{{ m.content }}
{% endfor -%}
last={{ ns.last_user }} day={{ strftime_now('%Y') | length }}"""


# Google's Gemma 3 template (tokenizer_config.json of google/gemma-3-*-it), text parts only.
OFFICIAL_GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def gemma() -> ChatTemplate:
    return template_for("gemma3", None, None, bos_token="<bos>", eos_token="<eos>")


def test_gemma_fallback_exact() -> None:
    assert gemma().render(CONVERSATION) == (
        "<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize("n_turns", [1, 2, 3, 4])
@pytest.mark.parametrize("system", [None, "Be brief.\nReally."])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gemma_fallback_matches_official_template(
    n_turns: int, system: str | None, add_generation_prompt: bool
) -> None:
    msgs: list[dict] = [{"role": "system", "content": system}] if system else []
    for i in range(n_turns):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append({"role": role, "content": f"  turn {i}\n "})
    official = template_for("gemma3", OFFICIAL_GEMMA3, None, bos_token="<bos>")
    kw = {"add_generation_prompt": add_generation_prompt}
    assert official.render(msgs, **kw) == gemma().render(msgs, **kw)


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3", "gemma3n"])
def test_gemma_archs_use_gemma_template(arch: str) -> None:
    tpl = template_for(arch, None, None)
    assert tpl.name == "gemma"
    assert tpl.stop_strings == ("<end_of_turn>",)


def test_gemma_system_reaches_model_text() -> None:
    tpl = gemma()
    # developer is treated as system; no generation prompt
    out = tpl.render(
        [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=False,
    )
    assert out == "<start_of_turn>user\nAnswer in French.\n\nHi<end_of_turn>\n"
    # a system prompt alone still reaches the model
    assert "Only system" in tpl.render([{"role": "system", "content": "Only system"}])
    # a system prompt before a model turn becomes its own user turn
    out = tpl.render(
        [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}],
        add_generation_prompt=False,
    )
    assert out == "<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
    assert "<bos>" not in tpl.render(CONVERSATION)


def test_list_of_parts_content() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    out = gemma().render([{"role": "user", "content": parts}])
    assert out == "<start_of_turn>user\nfirst\nsecond<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ChatTemplateError, match="unsupported content part type"):
        gemma().render(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        )


def test_normalization() -> None:
    msgs = normalize_messages(
        [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "developer", "content": "d"},
        ]
    )
    assert msgs == [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
        {"role": "system", "content": "d"},
    ]
    with pytest.raises(ChatTemplateError, match="role"):
        normalize_messages([{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatTemplateError):
        normalize_messages([{"role": "user", "content": 42}])
    with pytest.raises(ChatTemplateError, match="tool"):
        gemma().render([{"role": "user", "content": "x"}], tools=["not an object"])  # type: ignore[list-item]


def test_chatml_fallback_for_unknown_arch() -> None:
    tpl = template_for("qwen2", None, None)
    assert tpl.name == "chatml" and tpl.stop_strings == ("<|im_end|>",)
    assert tpl.render(CONVERSATION[:2]) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama3_only_when_obvious() -> None:
    assert template_for("llama", None, None, bos_token="<|begin_of_text|>").name == "llama3"
    assert template_for("llama", None, None, bos_token="<s>").name == "chatml"
    assert BUILTINS["llama3"].stop_strings[0] == "<|eot_id|>"
    tpl = template_for("llama", None, None, bos_token="<|begin_of_text|>")
    out = tpl.render([{"role": "user", "content": "Hi"}])
    assert out == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_precedence() -> None:
    assert template_for("gemma3", GGUF_CHATML, "{{ 'override' }}").render([]) == "override"
    assert template_for("gemma3", GGUF_CHATML, None).name == "gguf"
    assert template_for("gemma3", "  ", None).name == "gemma"
    # a broken GGUF template falls back to the builtin; a broken override is an error
    assert template_for("gemma3", "{% for %}", None).name == "gemma"
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        template_for("gemma3", None, "{% for %}")


def test_gguf_style_template_renders_and_strips_bos() -> None:
    tpl = template_for("qwen2", GGUF_CHATML, None, bos_token="<s>", eos_token="</s>")
    assert tpl.stop_strings == ("<|im_end|>",)
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tpl.render([{"role": "user", "content": "Hi"}]) == expected
    assert tpl.render([{"role": "user", "content": "Hi"}], strip_bos=False) == "<s>" + expected


def test_gguf_template_features() -> None:
    tpl = ChatTemplate(GGUF_TOOLS)
    tools = [{"type": "function", "function": {"name": "f", "description": "<é>"}}]
    out = tpl.render(CONVERSATION, tools=tools)
    # transformers-style tojson: no HTML escaping, no ASCII escaping
    assert '"description": "<é>"' in out
    assert "[user]Hi\n[assistant]Hello!\n[user]Bye\n" in out
    assert "[system]" not in out
    assert out.endswith("last=0 day=4")


def test_generation_tag_and_extra_vars() -> None:
    tpl = ChatTemplate("{% generation %}{{ 'T' if enable_thinking else 'F' }}{% endgeneration %}")
    assert tpl.render([], extra={"enable_thinking": True}) == "T"
    assert tpl.render([], extra={"messages": "ignored"}) == "F"


def test_raise_exception_gives_error_with_message() -> None:
    tpl = template_for("qwen2", GGUF_CHATML, None)
    with pytest.raises(ChatTemplateError, match="Unknown role: tool"):
        ChatTemplate(GGUF_CHATML.replace("'tool'", "'x'")).render(
            [{"role": "tool", "content": "r"}]
        )
    with pytest.raises(ChatTemplateError, match="^Roles must alternate$"):
        ChatTemplate("{{ raise_exception('Roles must alternate') }}").render([])
    assert tpl.render([{"role": "tool", "content": "r"}]).startswith("<|im_start|>tool")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ self.__dict__ }}",
        "{{ '' | attr('__class__') }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ messages.append(1) }}",
        "{% include 'x' %}",
    ],
)
def test_attribute_escape_is_an_error(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10**12) %}x{% endfor %}",
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
        "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "{% for x in [1] recursive %}{{ loop(range(99999)) }}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "{% set ns = namespace(n=7) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}"
        "{% endfor %}",
        "{{ 'a' * 10**10 }}",
        "{{ 10 ** (10 ** 10) }}",
        "{{ 'a' | center(10**10) }}",
        "{{ 'a'.ljust(10**10) }}",
        "{{ '{:>9999999999}'.format('a') }}",
        "{{ '%9999999999d' % 1 }}",
        "{{ 'ab'.replace('', 'x' * 4000000) }}",
        "{{ range(99999) | join('x' * 1000) }}",
        "{{ 'x' | batch(10**9, 'y') | list }}",
        "{{ lipsum(10**6) }}",
        "{% set big = 'x' * 4000000 %}{{ [big] * 1000 }}",
        "{% set big = 'x' * 4000000 %}{{ [big, big, big] | join }}",
        "{% set big = 'x' * 4000000 %}{{ ''.join([big, big, big]) }}",
        "{% set big = 'x' * 4000 %}{{ big.join(range(99999) | map('string')) }}",
        "{% set big = 'x' * 4000 %}{{ range(3) | batch(99999, big) | list }}",
        "{% set ns = namespace(l=['x' * 4000000]) %}{% for i in range(3) %}"
        "{% set ns.l = ns.l + ns.l %}{% endfor %}",
    ],
)
def test_runaway_templates_error_quickly(source: str) -> None:
    start = time.monotonic()
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
    assert time.monotonic() - start < 5


def test_output_cap_and_time_limit() -> None:
    limits = RenderLimits(max_chars=1000, timeout_s=0.05, max_steps=10**9)
    with pytest.raises(ChatTemplateError, match="output exceeds"):
        ChatTemplate("{% for i in range(2000) %}x{% endfor %}", limits=limits).render([])
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="time limit"):
        ChatTemplate(
            "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
            limits=limits,
        ).render([])
    assert time.monotonic() - start < 5  # the loops would run for hours without the limit


def test_concurrent_renders_have_separate_budgets() -> None:
    from concurrent.futures import ThreadPoolExecutor

    tpl = gemma()
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: tpl.render(CONVERSATION), range(64)))
    assert len(set(outs)) == 1
