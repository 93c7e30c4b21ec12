"""Fallback chat templates for GGUF files that carry no ``tokenizer.chat_template``.

They are ordinary Jinja templates, rendered through the same sandbox as GGUF templates, and
receive already-normalized messages (content is a string; ``developer`` became ``system``).
None of them emits BOS: llama.cpp's tokenizer adds it.

Tools (`chat.tools.render`): ``tools_prompt`` holds instructions listing the tools in the
family's call format, each assistant message with calls has them written out in
``tool_calls_text``, and ``tool`` results become a turn of their own (Gemma: a user turn with
a ```` ```tool_result ```` block; ChatML: ``<tool_response>``; Llama 3: the ``ipython`` role).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinTemplate:
    name: str
    source: str
    stop_strings: tuple[str, ...]


# Gemma (1/2/3/3n) turn format. Gemma has no system role: like Google's official Gemma 3
# template, leading system text is prepended to the first user turn followed by "\n\n", and
# user/model content is trimmed. Unlike it, this fallback does not insist on strict
# user/model alternation: later system messages and tool results become user turns, and a
# system prompt with no user turn after it becomes a user turn of its own.
GEMMA = BuiltinTemplate(
    name="gemma",
    stop_strings=("<end_of_turn>",),
    source="""\
{%- set ns = namespace(system=(tools_prompt or ''), started=false) -%}
{%- for message in messages -%}
    {%- set content = message['content'] | trim -%}
    {%- if message['role'] == 'tool' -%}
        {%- set content = '```tool_result\\n' ~ content ~ '\\n```' -%}
    {%- elif message.get('tool_calls_text') -%}
        {%- set content = (content ~ '\\n' if content else '') ~ message['tool_calls_text'] -%}
    {%- endif -%}
    {%- if message['role'] == 'system' and not ns.started -%}
        {%- set ns.system = ns.system ~ ('\\n\\n' if ns.system else '') ~ content -%}
    {%- else -%}
        {%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}
        {%- if ns.system and role != 'user' -%}
            {{- '<start_of_turn>user\\n' ~ ns.system ~ '<end_of_turn>\\n' -}}
            {%- set ns.system = '' -%}
        {%- endif -%}
        {{- '<start_of_turn>' ~ role ~ '\\n' -}}
        {%- if ns.system -%}
            {{- ns.system ~ '\\n\\n' -}}
            {%- set ns.system = '' -%}
        {%- endif -%}
        {{- content -}}
        {{- '<end_of_turn>\\n' -}}
        {%- set ns.started = true -%}
    {%- endif -%}
{%- endfor -%}
{%- if ns.system -%}
    {{- '<start_of_turn>user\\n' ~ ns.system ~ '<end_of_turn>\\n' -}}
{%- endif -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\\n' -}}
{%- endif -%}
""",
)

# ChatML (Qwen, Yi, many fine-tunes): the default for unknown architectures.
CHATML = BuiltinTemplate(
    name="chatml",
    stop_strings=("<|im_end|>",),
    source="""\
{%- if tools_prompt and not (messages and messages[0]['role'] == 'system') -%}
    {{- '<|im_start|>system\\n' ~ tools_prompt ~ '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- set content = message['content'] -%}
    {%- set role = message['role'] -%}
    {%- if role == 'tool' -%}
        {%- set role = 'user' -%}
        {%- set content = '<tool_response>\\n' ~ content ~ '\\n</tool_response>' -%}
    {%- elif message.get('tool_calls_text') -%}
        {%- set content = (content ~ '\\n' if content else '') ~ message['tool_calls_text'] -%}
    {%- elif loop.first and role == 'system' and tools_prompt -%}
        {%- set content = content ~ '\\n\\n' ~ tools_prompt -%}
    {%- endif -%}
    {{- '<|im_start|>' ~ role ~ '\\n' ~ content ~ '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
""",
)

# Llama 3.x header format (tool results use the `ipython` role, as in Meta's templates).
LLAMA3 = BuiltinTemplate(
    name="llama3",
    stop_strings=("<|eot_id|>", "<|eom_id|>"),
    source="""\
{%- if tools_prompt -%}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' ~ tools_prompt ~ '<|eot_id|>' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- set role = 'ipython' if message['role'] == 'tool' else message['role'] -%}
    {%- set content = message['content'] | trim -%}
    {%- if message.get('tool_calls_text') -%}
        {%- set content = (content ~ '\\n' if content else '') ~ message['tool_calls_text'] -%}
    {%- endif -%}
    {{- '<|start_header_id|>' ~ role ~ '<|end_header_id|>\\n\\n' -}}
    {{- content -}}
    {{- '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{%- endif -%}
""",
)

BUILTINS: dict[str, BuiltinTemplate] = {t.name: t for t in (GEMMA, CHATML, LLAMA3)}

LLAMA3_BOS = "<|begin_of_text|>"


def builtin_for(arch: str, bos_token: str = "") -> BuiltinTemplate:
    """The fallback template for a GGUF ``general.architecture`` (ChatML when unknown)."""
    arch = (arch or "").lower()
    if arch.startswith("gemma"):  # gemma, gemma2, gemma3, gemma3n, ...
        return GEMMA
    if arch == "llama" and bos_token == LLAMA3_BOS:  # Llama 1/2 use <s>; only 3.x has this
        return LLAMA3
    return CHATML
