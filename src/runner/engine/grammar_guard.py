"""Keeps grammars from aborting the process or holding the engine.

`GrammarWork` bounds the grammar work one constrained request may make per token. llama.cpp's
grammar keeps one parse stack per way the output so far can be read: an ambiguous grammar
multiplies them with every token (a 60-byte one triples them per character), and a grammar
of many alternatives starts with one per alternative. Checking candidates costs stacks x
candidates, accepting a token costs up to stacks squared (llama.cpp removes duplicate stacks
by linear search), all inside C calls that cannot be interrupted. So the vocabulary-wide
passes run in chunks (a cancel or the budget is seen between two), their total cost is
predicted from the first chunk, an accept's cost is predicted from the check of the same
token (which builds the same stacks once), and a request whose next piece of work would
pass the budget fails with `GrammarTooCostly` instead. Work is measured in CPU seconds of
the engine thread, so a loaded machine's preemptions do not count against a request.

`TriggerGuard` keeps a lazy grammar's trigger from aborting the process. When a lazy grammar's
trigger pattern appears, llama.cpp replays the text from the trigger to
the end of the token that completed it into the grammar; if the grammar refuses that text,
llama.cpp throws through its C API, which ends the process. The model picks that token
freely (the grammar is not active yet), so a refused replay is possible: a tool-call marker
run into unexpected text within one token. `TriggerGuard` watches the same text in Python,
and when a token would trigger, checks the replay on a fresh (non-lazy) copy of the grammar
first; the sampler drops the grammar instead of accepting a replay that does not fit.
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Callable, Sequence

import llama_cpp

from .model import LlamaModel
from .types import EngineError, InvalidRequest

# Candidates in the first chunk of a vocabulary-wide pass (its cost prices the rest).
FIRST_CHUNK = 256
# CPU seconds per later chunk: how soon a cancel is seen inside a pass.
CHUNK_SECONDS = 0.005
# An accept costs about check_seconds**2 / ACCEPT_SCALE (measured: llama.cpp's duplicate
# search is quadratic in the stacks a check builds once); 0.3 ms over-predicts on the
# machine it was measured on, and the accept's real cost is charged after it in any case.
ACCEPT_SCALE = 0.0003
_TOKEN_DATA_SIZE = ctypes.sizeof(llama_cpp.llama_token_data)


class GrammarTooCostly(InvalidRequest):
    """The request's grammar needs more work per token than the server allows."""


class GrammarCancelled(EngineError):
    """The request was cancelled in the middle of its grammar work."""


Allows = Callable[[object, int], bool]


class GrammarWork:
    """One constrained request's grammar work per token, bounded by `budget` CPU seconds.

    `begin_token` starts a token's account; `allows`, `filter` and `accept` do the grammar's
    work and charge it, raising `GrammarTooCostly` when what they are about to do (or just
    did) passes the budget, and `GrammarCancelled` when `cancelled()` turns true between
    two chunks of a pass.
    """

    def __init__(self, budget: float, cancelled: Callable[[], bool] | None = None) -> None:
        self.budget = budget
        self.cancelled = cancelled or (lambda: False)
        self.spent = 0.0
        self._checked: tuple[int, float] | None = None  # last token checked, CPU seconds
        self._last: tuple[float, float] | None = None  # (check, accept) of the last token

    def begin_token(self) -> None:
        self.spent = 0.0
        self._checked = None

    def allows(self, allows: Allows, grammar: object, token: int) -> bool:
        """`allows(grammar, token)`, timed (the time prices that token's accept)."""
        started = time.thread_time()
        ok = allows(grammar, token)
        seconds = time.thread_time() - started
        self._checked = (token, seconds)
        self._charge(seconds, "checking a token")
        return ok

    def filter(self, grammar: object, array: llama_cpp.llama_token_data_array) -> None:
        """Apply `grammar` to `array`'s candidates (rejected ones get logit -inf), a chunk
        at a time."""
        size = int(array.size)
        base = ctypes.cast(array.data, ctypes.c_void_p).value or 0
        view = llama_cpp.llama_token_data_array(
            data=array.data, size=0, selected=-1, sorted=array.sorted
        )
        done, chunk = 0, FIRST_CHUNK
        while done < size:
            if self.cancelled():
                raise GrammarCancelled("cancelled during grammar work")
            n = min(chunk, size - done)
            view.data = ctypes.cast(base + done * _TOKEN_DATA_SIZE, llama_cpp.llama_token_data_p)
            view.size = n
            started = time.thread_time()
            llama_cpp.llama_sampler_apply(grammar, ctypes.byref(view))
            seconds = time.thread_time() - started
            done += n
            per_candidate = seconds / n
            self.spent += seconds
            if self.spent + per_candidate * (size - done) > self.budget:  # the rest, priced
                self._refuse("checking the vocabulary")
            chunk = max(FIRST_CHUNK, int(CHUNK_SECONDS / per_candidate)) if seconds else size

    def accept(self, allows: Allows, grammar: object, token: int) -> None:
        """Advance the grammar past `token`, unless that is predicted to pass the budget."""
        if self._checked is None or self._checked[0] != token:
            self.allows(allows, grammar, token)
        assert self._checked is not None
        check = self._checked[1]
        predicted = check * check / ACCEPT_SCALE
        if self._last is not None:  # the growth since the last token, squared
            last_check, last_accept = self._last
            predicted = max(predicted, last_accept * (check / max(last_check, 1e-6)) ** 2)
        if self.spent + predicted > self.budget:
            self._refuse("accepting a token")
        started = time.thread_time()
        llama_cpp.llama_sampler_accept(grammar, token)
        seconds = time.thread_time() - started
        self._last = (check, seconds)
        self._charge(seconds, "accepting a token")

    def _charge(self, seconds: float, doing: str) -> None:
        self.spent += seconds
        if self.spent > self.budget:
            self._refuse(doing)

    def _refuse(self, doing: str) -> None:
        raise GrammarTooCostly(
            f"the grammar needs more than {self.budget:g} s of work per token ({doing}): it is "
            "too ambiguous or has too many alternatives; simplify it (the bound is "
            "--grammar-step-budget)"
        )


def _piece(model: LlamaModel, token: int) -> str:
    """The token's text as the grammar sees it (special tokens included)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(model.vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(model.vocab, token, buf, len(buf), 0, True)
    return buf.raw[:n].decode("utf-8", "replace")


class TriggerGuard:
    def __init__(self, model: LlamaModel, grammar: str, patterns: Sequence[str]) -> None:
        self.model = model
        self.grammar = grammar.encode("utf-8")
        self.patterns = [re.compile(p) for p in patterns]
        self.text = ""
        self.watching = True

    def safe_to_accept(self, token: int, allows: Callable[[object, int], bool]) -> bool:
        """Whether the lazy grammar may accept `token`; `allows(grammar, token)` is the
        one-candidate check. After the trigger has fired, always True."""
        if not self.watching:
            return True
        self.text += _piece(self.model, token)
        for pattern in self.patterns:
            match = pattern.search(self.text)
            if match is None:
                continue
            self.watching = False
            # llama.cpp starts the grammar at the first non-empty group, else at the match.
            groups = [i for i in range(1, len(match.groups()) + 1) if match.group(i)]
            start = match.start(groups[0]) if groups else match.start()
            return self._fits(self.text[start:], allows)
        return True

    def _fits(self, text: str, allows: Callable[[object, int], bool]) -> bool:
        fresh = llama_cpp.llama_sampler_init_grammar(self.model.vocab, self.grammar, b"root")
        if not fresh:
            return False
        try:
            for token in self.model.tokenize(text, add_special=False, parse_special=True):
                if not allows(fresh, token):
                    return False
                llama_cpp.llama_sampler_accept(fresh, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(fresh)
