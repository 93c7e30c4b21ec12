"""A hardened Jinja sandbox for rendering untrusted chat templates.

Chat templates come from GGUF files and from users, so they are hostile until proven otherwise.
`ImmutableSandboxedEnvironment` already blocks attribute escapes (``''.__class__``), mutation
of lists/dicts, and ``range`` over more than 100 000 items. This subclass adds what it lacks:

* **Unsafe attributes fail loudly**: touching one raises `SecurityError` instead of rendering
  as an empty string.
* **A step budget and a deadline per render.** Jinja has no ``while``: a template can only run
  long through ``for`` loops (finite, but nestable) and calls (macros, recursive loops). At parse
  time every ``for`` loop's iterable is wrapped in `guard_iter`, and every sandboxed call goes
  through `call`; both charge one step to the render's `Budget`, which raises `RunawayTemplate`
  past `max_steps` or after `timeout_s` of wall-clock time. So e.g. two nested
  ``range(99999)`` loops stop after `max_steps` iterations, not 10^10.
* **A size cap** (`max_chars`) on every string/list a template builds in one step, checked
  *before* the allocation where the size is predictable: ``*``, ``+``, ``**``, ``%``, ``~``,
  ``str.format``, the padding/repeating ``str`` methods and filters (see `sandbox_limits`). The
  output is capped too.

Limits live on the environment (one per `ChatTemplate`); the budget is per render, in a
context variable, so one environment can render concurrently from several threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .sandbox_limits import (
    SAFE_FILTERS,
    RenderLimits,
    RunawayTemplate,
    check_binop,
    check_format_string,
    check_len,
    check_result,
    check_str_method,
)

__all__ = ["HardenedEnvironment", "RenderLimits", "RunawayTemplate", "TemplateRaised", "budget"]


class TemplateRaised(TemplateError):
    """The template called ``raise_exception(message)``; the message is meant for the user."""


@dataclass
class Budget:
    max_steps: int
    deadline: float
    steps: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise RunawayTemplate(f"chat template exceeded {self.max_steps} loop/call steps")
        if time.monotonic() > self.deadline:
            raise RunawayTemplate("chat template exceeded its time limit")


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "runner_chat_budget", default=None
)


@contextlib.contextmanager
def budget(limits: RenderLimits) -> Iterator[Budget]:
    b = Budget(limits.max_steps, time.monotonic() + limits.timeout_s)
    token = _BUDGET.set(b)
    try:
        yield b
    finally:
        _BUDGET.reset(token)


def _step() -> None:
    b = _BUDGET.get()
    if b is not None:
        b.step()


class _GuardedIterable:
    """Wraps a ``for`` loop's iterable: one budget step per item; keeps ``len`` for ``loop``."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._it = iterable

    def __len__(self) -> int:
        return len(self._it)  # type: ignore[arg-type]  # TypeError -> LoopContext copes

    def __iter__(self) -> Iterator[Any]:
        for item in self._it:
            _step()
            yield item


class _Instrument(NodeTransformer):
    """Rewrites the parsed template: guard every loop, route every ``~`` through safe_concat."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        guard = nodes.EnvironmentAttribute("guard_iter", lineno=node.lineno)
        node.iter = nodes.Call(guard, [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        func = nodes.EnvironmentAttribute("safe_concat", lineno=node.lineno)
        return nodes.Call(func, list(node.nodes), [], None, None, lineno=node.lineno)


class GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (HF's assistant-mask marker): renders the body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: Any) -> None:
    raise TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(str(fmt)[:256])


class HardenedEnvironment(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` + budgets; see the module docstring."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, limits: RenderLimits | None = None) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            extensions=[loopcontrols, GenerationTag],
        )
        self.limits = limits or RenderLimits()
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) is an allocation bomb
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.filters.update(SAFE_FILTERS)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        tree = _Instrument().visit(tree)
        tree.set_environment(self)
        return tree

    def guard_iter(self, iterable: Any) -> Any:
        return _GuardedIterable(iterable)

    def safe_concat(self, *parts: Any) -> str:
        strs = [str(p) for p in parts]
        check_len(self.limits, sum(len(s) for s in strs))
        return "".join(strs)

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
        out: list[str] = []
        total = 0
        for part in parts:
            total += len(part)
            if total > self.limits.max_chars:
                raise RunawayTemplate(f"chat template output exceeds {self.limits.max_chars} chars")
            out.append(part)
        return "".join(out)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} is unsafe"
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _step()
        check_binop(self.limits, operator, left, right)
        return check_result(self.limits, super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            check_format_string(self.limits, value.__self__)
        return wrapped

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        if isinstance(obj, LoopContext) and args:  # a recursive loop: `loop(children)`
            args = (_GuardedIterable(args[0]), *args[1:])
        if isinstance(obj, types.BuiltinMethodType) and isinstance(obj.__self__, str):
            if obj.__name__ == "join" and args:  # size the items before joining them
                args = (list(args[0]), *args[1:])
            check_str_method(self.limits, obj.__self__, obj.__name__, args, kwargs)
        return check_result(self.limits, super().call(context, obj, *args, **kwargs))
