"""Split a reasoning model's thought out of its answer, as llama-server's
``reasoning_format: deepseek`` does: ``<think>...</think>`` at the start of the output (or
everything up to ``</think>`` when the prompt already opened the thought, as DeepSeek R1 and
Qwen 3 templates do) goes to ``reasoning_content``; the rest is the answer. A thought that
never closes (the budget or max_tokens ran out) is all reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

THINK_START = "<think>"
THINK_END = "</think>"


def prompt_opens_thought(prompt: str) -> bool:
    """Whether a rendered prompt ends inside ``<think>`` (the model continues the thought)."""
    tail = prompt.rstrip()
    return tail.endswith(THINK_START)


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


def _held(text: str, marker: str) -> int:
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


@dataclass
class ReasoningSplitter:
    """`feed` text, get ("reasoning" | "content", text) pieces; `finish` at the end."""

    open_at_start: bool = False
    _state: str = field(default="start", init=False)  # start, thinking, answer
    _buf: str = field(default="", init=False)
    _after_thought: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.open_at_start:
            self._state = "thinking"

    def feed(self, text: str, final: bool = False) -> list[tuple[str, str]]:
        self._buf += text
        out: list[tuple[str, str]] = []
        while self._buf:
            if self._state == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(THINK_START):
                    self._buf = stripped[len(THINK_START) :]
                    self._state = "thinking"
                elif not final and THINK_START.startswith(stripped):
                    break  # maybe the start of <think>
                else:
                    self._state = "answer"
            elif self._state == "thinking":
                index = self._buf.find(THINK_END)
                if index >= 0:
                    out.append(("reasoning", self._buf[:index]))
                    self._buf = self._buf[index + len(THINK_END) :]
                    self._state = "answer"
                    self._after_thought = True
                    continue
                keep = 0 if final else _held(self._buf, THINK_END)
                out.append(("reasoning", self._buf[: len(self._buf) - keep]))
                self._buf = self._buf[len(self._buf) - keep :]
                break
            else:
                if self._after_thought:  # the answer starts after the blank line
                    stripped = self._buf.lstrip()
                    if not stripped and not final:
                        self._buf = ""
                        break
                    self._buf = stripped
                    self._after_thought = False
                out.append(("content", self._buf))
                self._buf = ""
        return [(kind, text) for kind, text in out if text]

    def finish(self) -> list[tuple[str, str]]:
        return self.feed("", final=True)
