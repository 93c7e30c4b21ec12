"""Fallback chat templates for GGUF files that carry no ``tokenizer.chat_template``.

They are ordinary Jinja templates, rendered through the same sandbox as GGUF templates, and
receive already-normalized messages (content is a string; ``developer`` became ``system``).
None of them emits BOS: llama.cpp's tokenizer adds it.
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
{%- set ns = namespace(system='', started=false) -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' and not ns.started -%}
        {%- set ns.system = ns.system ~ ('\\n\\n' if ns.system else '') ~ message['content'] -%}
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
        {{- message['content'] | trim -}}
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
{%- for message in messages -%}
    {{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' -}}
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
{%- for message in messages -%}
    {%- set role = 'ipython' if message['role'] == 'tool' else message['role'] -%}
    {{- '<|start_header_id|>' ~ role ~ '<|end_header_id|>\\n\\n' -}}
    {{- message['content'] | trim -}}
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
