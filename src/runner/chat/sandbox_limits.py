"""Size guards for the chat-template sandbox: check what a template is about to build.

Each check runs *before* the allocation where the size is predictable (``'a' * n``, padding
widths, ``replace`` amplification, format widths) and raises `RunawayTemplate` past
`RenderLimits.max_chars` items or `RenderLimits.max_int_bits` bits. `SAFE_FILTERS` replaces
the Jinja filters that take a size parameter, plus ``tojson`` (transformers' version).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from string import Formatter
from typing import Any

from jinja2 import filters as jf
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.filters import pass_environment, pass_eval_context


class RunawayTemplate(TemplateError):
    """The template exceeded its step, time or size budget."""


@dataclass(frozen=True)
class RenderLimits:
    max_steps: int = 1_000_000  # loop iterations + calls per render (~0.3 s of CPU)
    timeout_s: float = 1.0  # wall-clock budget per render
    max_chars: int = 8 * 1024 * 1024  # any one string/list, and the whole output
    max_int_bits: int = 65_536  # integers a template may compute


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")
_SEQS = (str, list, tuple)


def check_len(limits: RenderLimits, n: int) -> None:
    if n > limits.max_chars:
        raise RunawayTemplate(f"chat template built a value over {limits.max_chars} items")


def check_width(limits: RenderLimits, width: Any) -> None:
    if isinstance(width, int) and width > limits.max_chars:
        raise RunawayTemplate(f"width {width} is too large")


def check_int(limits: RenderLimits, bits: int) -> None:
    if bits > limits.max_int_bits:
        raise RunawayTemplate("integer too large")


def check_result(limits: RenderLimits, value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict)):
        check_len(limits, len(value))
    elif isinstance(value, int):
        check_int(limits, value.bit_length())
    return value


def _check_number(limits: RenderLimits, num: str) -> None:
    if len(num) > 12 or int(num) > limits.max_chars:
        raise RunawayTemplate(f"format width {num} is too large")


def check_printf(limits: RenderLimits, fmt: str) -> None:
    """``fmt % args``: no ``*`` widths, no width/precision above the size limit."""
    for m in _PRINTF_SPEC.finditer(fmt):
        for num in m.groups():
            if num == "*":
                raise SecurityError("'*' width in % formatting is not allowed")
            if num is not None:
                _check_number(limits, num)


def check_format_string(limits: RenderLimits, fmt: str) -> None:
    """``fmt.format(...)``: no nested fields in specs, no width above the size limit."""
    for _literal, _field, spec, _conv in Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise SecurityError("nested fields in a format spec are not allowed")
        for num in _DIGITS.findall(spec):
            _check_number(limits, num)


def weight(value: Any, limit: int) -> int:
    """Roughly how many characters `value` becomes as text: string lengths plus one per item,
    summed through lists/tuples/dicts (so ``[big] * 1000`` weighs 1000 bigs). Stops past
    `limit`, so it costs at most O(limit)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, (list, tuple, dict)):
            total += len(item) + 1
            if total <= limit:
                stack.extend(item.items() if isinstance(item, dict) else item)
        else:
            total += 1
        if total > limit:
            break
    return total


def check_weight(limits: RenderLimits, value: Any, times: int = 1) -> None:
    if times > 0:
        check_len(limits, weight(value, limits.max_chars) * times)


def check_binop(limits: RenderLimits, operator: str, left: Any, right: Any) -> None:
    both_int = isinstance(left, int) and isinstance(right, int)
    if operator == "*":
        if isinstance(left, _SEQS) and isinstance(right, int):
            check_weight(limits, left, right)
        elif isinstance(right, _SEQS) and isinstance(left, int):
            check_weight(limits, right, left)
        elif both_int:
            check_int(limits, left.bit_length() + right.bit_length())
    elif operator == "+" and isinstance(left, _SEQS) and isinstance(right, _SEQS):
        if isinstance(left, str):
            check_len(limits, len(left) + len(right))
        else:
            check_len(limits, weight(left, limits.max_chars) + weight(right, limits.max_chars))
    elif operator == "**" and both_int and abs(left) > 1 and right > 0:
        check_int(limits, left.bit_length() * right)
    elif operator == "%" and isinstance(left, str):
        check_printf(limits, left)


def check_join(limits: RenderLimits, sep: str, items: list[Any]) -> None:
    check_len(limits, len(sep) * len(items) + weight(items, limits.max_chars))


def _replace_size(s: str, old: str, new: str) -> int:
    return len(s) + (s.count(old) if old else len(s) + 1) * len(new)


def check_str_method(
    limits: RenderLimits, s: str, name: str, args: tuple[Any, ...], kw: dict[str, Any]
) -> None:
    """Calls of ``str`` methods that can build far more than their inputs."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        check_width(limits, args[0])
    elif name == "expandtabs":
        tab = args[0] if args else kw.get("tabsize", 8)
        if isinstance(tab, int):
            check_len(limits, len(s) * max(tab, 1))
    elif name == "replace" and len(args) >= 2:
        if isinstance(args[0], str) and isinstance(args[1], str):
            check_len(limits, _replace_size(s, args[0], args[1]))
    elif name == "join" and args and isinstance(args[0], list):  # `call` makes it a list
        check_join(limits, s, args[0])


# -- filters with size parameters (the environment carries `limits`) ----------------------


@pass_environment
def _center(env: Any, value: Any, width: int = 80) -> str:
    check_width(env.limits, width)
    return jf.do_center(value, width)


@pass_environment
def _indent(
    env: Any, s: Any, width: int | str = 4, first: bool = False, blank: bool = False
) -> str:
    text = str(s)
    pad = width if isinstance(width, int) else len(str(width))
    check_len(env.limits, len(text) + (text.count("\n") + 1) * pad)
    return jf.do_indent(s, width, first, blank)


@pass_environment
def _format(env: Any, value: Any, *args: Any, **kwargs: Any) -> str:
    check_printf(env.limits, str(value))
    return check_result(env.limits, jf.do_format(value, *args, **kwargs))


@pass_environment
def _wordwrap(
    env: Any,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    if wrapstring:
        n_breaks = len(str(s)) // max(int(width), 1) + 1
        check_len(env.limits, len(str(wrapstring)) * n_breaks + len(str(s)))
    return jf.do_wordwrap(env, s, width, break_long_words, wrapstring, break_on_hyphens)


@pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    check_len(eval_ctx.environment.limits, _replace_size(str(s), str(old), str(new)))
    return jf.do_replace(eval_ctx, s, old, new, count)


@pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    limits = eval_ctx.environment.limits
    items = list(value)
    check_join(limits, str(d), items)
    return check_result(limits, jf.sync_do_join(eval_ctx, items, d, attribute))


@pass_environment
def _batch(env: Any, value: Any, linecount: int, fill_with: Any = None) -> Any:
    check_width(env.limits, linecount)
    check_weight(env.limits, fill_with, linecount if fill_with is not None else 0)
    return jf.do_batch(value, linecount, fill_with)


@pass_environment
def _slice(env: Any, value: Any, slices: int, fill_with: Any = None) -> Any:
    check_width(env.limits, slices)
    check_weight(env.limits, fill_with, slices if fill_with is not None else 0)
    return jf.sync_do_slice(value, slices, fill_with)


@pass_environment
def _tojson(
    env: Any,
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson``: plain `json.dumps`, no HTML escaping (unlike Jinja's)."""
    if (isinstance(indent, int) and indent > 32) or (isinstance(indent, str) and len(indent) > 32):
        raise RunawayTemplate("tojson indent is too large")
    text = json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
        default=str,
    )
    return check_result(env.limits, text)


SAFE_FILTERS: dict[str, Any] = {
    "center": _center,
    "indent": _indent,
    "format": _format,
    "wordwrap": _wordwrap,
    "replace": _replace,
    "join": _join,
    "batch": _batch,
    "slice": _slice,
    "tojson": _tojson,
}
