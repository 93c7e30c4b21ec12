"""Render OpenAI chat messages to a prompt string with a (possibly hostile) Jinja chat template.

Choice of template (`template_for`): a user override (``--chat-template-file`` or the
``_configure`` endpoint) beats the GGUF's ``tokenizer.chat_template``, which beats a built-in
fallback picked by architecture (`builtin_templates`), ChatML being the last resort.

Templates run in `sandbox.HardenedEnvironment`; every failure while compiling or rendering
(`raise_exception(...)`, sandbox violations, runaway loops, type errors) becomes a
`ChatTemplateError`, which the API reports as HTTP 400.

BOS: GGUF templates usually start with ``{{ bos_token }}``, but llama.cpp's tokenizer adds BOS
itself (``add_special=True``). `ChatTemplate.render` therefore strips one leading `bos_token`
by default, so tokenize its result with BOS added; pass ``strip_bos=False`` for models whose
tokenizer does not add BOS.

Message normalization (`normalize_messages`): ``content`` may be a string, ``None`` (becomes
``""``) or a list of parts; ``{"type": "text"}`` parts are joined with ``"\\n"`` (as
llama-server does), any other part type (``image_url``, ``input_audio``...) is an error.
Roles are ``system``, ``developer`` (rendered as ``system``), ``user``, ``assistant`` and
``tool``. Other message keys (``tool_calls``, ``tool_call_id``, ``name``...) pass through.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jinja2 import Template

from .builtin_templates import BuiltinTemplate, builtin_for
from .sandbox import HardenedEnvironment, RenderLimits, TemplateRaised, budget
from .toolcalls import ToolCallFormat, detect_format

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_TEMPLATE_CHARS = 1024 * 1024

# End-of-turn markers that, when a template mentions them, are worth passing as extra stops.
_KNOWN_STOPS = (
    "<end_of_turn>",  # Gemma
    "<|im_end|>",  # ChatML
    "<|eot_id|>",  # Llama 3
    "<|eom_id|>",
    "<|end|>",  # Phi-3
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",  # gpt-oss
    "<|END_OF_TURN_TOKEN|>",  # Command-R
    "[/INST]",
)


class ChatTemplateError(ValueError):
    """The chat template or the messages could not be rendered; reported as HTTP 400."""


def content_length(messages: Iterable[Mapping[str, Any]]) -> int:
    """Characters of the messages' text content: a lower bound of their rendered prompt's
    size (templates write every message's content), known before rendering it."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, Sequence):
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                total += len(text) if isinstance(text, str) else 0
    return total


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, Mapping):
                raise ChatTemplateError("content parts must be objects")
            kind = part.get("type")
            if kind != "text":
                raise ChatTemplateError(f"unsupported content part type: {kind!r}")
            text = part.get("text")
            if not isinstance(text, str):
                raise ChatTemplateError("a text content part needs a string 'text'")
            texts.append(text)
        return "\n".join(texts)
    raise ChatTemplateError("message content must be a string, null or a list of parts")


def normalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain-dict copies with string content and known roles (``developer`` -> ``system``)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ChatTemplateError("each message must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise ChatTemplateError(f"unsupported message role: {role!r}")
        msg = dict(message)
        msg["role"] = "system" if role == "developer" else role
        msg["content"] = _content_text(message.get("content"))
        out.append(msg)
    return out


def _stops_in(source: str) -> tuple[str, ...]:
    return tuple(s for s in _KNOWN_STOPS if s in source)


class ChatTemplate:
    """A compiled chat template. Thread-safe: `render` may run concurrently."""

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        name: str = "custom",
        stop_strings: Sequence[str] | None = None,
        limits: RenderLimits | None = None,
    ) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("chat template is empty")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"chat template is over {MAX_TEMPLATE_CHARS} characters")
        self.source = source
        self.name = name
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.limits = limits or RenderLimits()
        found = _stops_in(source)
        self.stop_strings: tuple[str, ...] = tuple(stop_strings) if stop_strings else found
        # How this model writes tool calls; `template_for` sets it from the architecture and
        # the per-model ``tool-format`` setting.
        self.tool_format: ToolCallFormat = detect_format(source)
        # "deepseek": <think>...</think> goes to reasoning_content; "none": left inline.
        self.reasoning_format = "deepseek"
        self._env = HardenedEnvironment(self.limits)
        try:
            with budget(self.limits):
                self._template: Template = self._env.from_string(source)
        except Exception as exc:  # TemplateSyntaxError, RecursionError on absurd nesting...
            raise ChatTemplateError(f"invalid chat template: {_describe(exc)}") from exc

    @classmethod
    def from_builtin(cls, builtin: BuiltinTemplate, **kwargs: Any) -> ChatTemplate:
        return cls(builtin.source, name=builtin.name, stop_strings=builtin.stop_strings, **kwargs)

    def render(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
        strip_bos: bool = True,
    ) -> str:
        """The prompt text for `messages`; raises `ChatTemplateError` on any failure.

        `extra` holds additional template variables (llama-server's ``chat_template_kwargs``,
        e.g. ``enable_thinking``); they cannot replace the standard ones.
        """
        variables: dict[str, Any] = dict(extra or {})
        variables.update(
            messages=normalize_messages(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        if tools:
            if not all(isinstance(t, Mapping) for t in tools):
                raise ChatTemplateError("each tool must be an object")
            variables["tools"] = [dict(t) for t in tools]
        try:
            with budget(self.limits):
                text = self._template.render(variables)
        except TemplateRaised as exc:
            raise ChatTemplateError(exc.message or "chat template raised an error") from exc
        except Exception as exc:  # SecurityError, RunawayTemplate, TypeError, RecursionError...
            raise ChatTemplateError(f"chat template error: {_describe(exc)}") from exc
        if strip_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, chars={len(self.source)})"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def template_for(
    arch: str,
    gguf_template: str | None,
    override: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    limits: RenderLimits | None = None,
    tool_format: str | None = None,
) -> ChatTemplate:
    """Pick and compile a model's chat template: override > GGUF > builtin by arch > ChatML.

    An override that does not compile raises `ChatTemplateError` (the user supplied it);
    a broken GGUF template is logged and replaced by the built-in fallback. The template's
    `tool_format` is `tool_format` (a `toolcalls.FORMATS` name) if given, else detected.
    """
    template = _pick(arch, gguf_template, override, bos_token, eos_token, limits)
    template.tool_format = detect_format(template.source, arch, tool_format)
    return template


def _pick(
    arch: str,
    gguf_template: str | None,
    override: str | None,
    bos_token: str,
    eos_token: str,
    limits: RenderLimits | None,
) -> ChatTemplate:
    kwargs: dict[str, Any] = {"bos_token": bos_token, "eos_token": eos_token, "limits": limits}
    if override is not None and override.strip():
        return ChatTemplate(override, name="override", **kwargs)
    if gguf_template and gguf_template.strip():
        try:
            return ChatTemplate(gguf_template, name="gguf", **kwargs)
        except ChatTemplateError as exc:
            log.warning("ignoring the GGUF chat template (%s); using a built-in one", exc)
    return ChatTemplate.from_builtin(builtin_for(arch, bos_token), **kwargs)
