"""Keeps a lazy grammar's trigger from aborting the process.

When a lazy grammar's trigger pattern appears, llama.cpp replays the text from the trigger to
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
from collections.abc import Callable, Sequence

import llama_cpp

from .model import LlamaModel


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
