"""Per-request llama.cpp sampler chains, with grammars checked the way llama-server does.

A grammar sampler is expensive on a large vocabulary: it decodes every candidate token's
text against the grammar's stacks (262,144 candidates per step on Gemma 3). So, as
llama-server's ``common_sampler_sample`` does, the grammar is kept out of the chain: the chain
draws a token from the full distribution, the grammar checks only that one token, and only
when it is rejected is the full vocabulary filtered by the grammar and the chain run again.
Most tokens of a constrained answer are what the model wanted anyway, so most steps cost
one grammar check instead of a vocabulary-wide one. A rejected draw goes one step further
than llama-server: it first checks only the `SHORTLIST` likeliest tokens, which gives the very
same draw whenever enough of them are allowed (`_plan_shortlist`), and passes the whole
vocabulary through the grammar only otherwise. The chosen token is then accepted by both the
grammar and the chain.

Lazy grammars (``grammar_lazy`` with ``grammar_triggers``, e.g. a tool call in "auto" mode)
stay inactive until a trigger pattern appears in the output; until then they let every
token through. `grammar_guard.TriggerGuard` makes sure a trigger never aborts the process.

A thinking budget (``reasoning_budget`` >= 0) counts the tokens generated inside
``<think>...</think>``; when it is spent, the sampler forces ``</think>`` and the model goes
on with its answer.
"""

from __future__ import annotations

import ctypes
import random

import llama_cpp
import numpy as np

from .grammar_guard import GrammarWork, TriggerGuard
from .model import LlamaModel
from .types import InvalidRequest, SamplingParams

# How many of the likeliest tokens a rejected draw checks before the whole vocabulary.
SHORTLIST = 1024
THINK_START = "<think>"
THINK_END = "</think>"

# llama_token_data as a numpy record, so a whole vocabulary is filled with two array copies.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class _Candidates:
    """A reusable ``llama_token_data_array`` over the full vocabulary."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.array = llama_cpp.llama_token_data_array(
            data=self.data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )
        self.one = llama_cpp.llama_token_data(0, 1.0, 0.0)
        self.one_array = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self.one), size=1, selected=-1, sorted=False
        )

    def fill(self, ctx: llama_cpp.llama_context_p, index: int) -> ctypes.Array:
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        self.data["id"] = self.ids
        self.data["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.data["p"] = 0.0
        arr = self.array
        # Samplers may move `data` (top-k keeps a pointer into its own buffer) and shrink size.
        arr.data = self.data.ctypes.data_as(llama_cpp.llama_token_data_p)
        arr.size = self.n_vocab
        arr.selected = -1
        arr.sorted = False
        return ctypes.byref(arr)

    def selected(self) -> int:
        arr = self.array
        if arr.selected < 0:
            raise InvalidRequest("no token left to sample (the grammar allows nothing here)")
        return int(arr.data[arr.selected].id)

    def keep_allowed(self) -> int:
        """After a grammar pass over a sorted shortlist: move the tokens it allows to the
        front, in order, and make them the array. Returns how many there are."""
        arr = self.array
        shortlist = self.data[: arr.size]
        allowed = shortlist[shortlist["logit"] != -np.inf]
        self.data[: len(allowed)] = allowed
        arr.size = len(allowed)
        arr.sorted = True
        return len(allowed)

    def allows(self, grammar: llama_cpp.llama_sampler_p, token: int) -> bool:
        """Whether `grammar` accepts `token` next (the one-candidate check)."""
        self.one.id = token
        self.one.logit = 1.0
        self.one.p = 0.0
        arr = self.one_array
        arr.data = ctypes.pointer(self.one)
        arr.size = 1
        arr.selected = -1
        arr.sorted = False
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(arr))
        return self.one.logit != float("-inf")


class _ThinkingBudget:
    """Counts tokens inside <think>...</think> and forces the end once `budget` is spent."""

    def __init__(self, model: LlamaModel, budget: int, open_at_start: bool) -> None:
        self.model = model
        self.budget = budget
        self.thinking = open_at_start
        self.done = False
        self.used = 0
        self.tail = ""
        self.forced: list[int] = []
        self.end_tokens = model.tokenize(THINK_END, add_special=False, parse_special=True)

    def next_forced(self) -> int | None:
        if self.forced:
            return self.forced.pop(0)
        if self.thinking and not self.done and self.used >= self.budget:
            self.done = True
            self.forced = list(self.end_tokens)
            return self.forced.pop(0) if self.forced else None
        return None

    def observe(self, token: int) -> None:
        if self.done and not self.forced:
            return
        text = self.model.piece(token).decode("utf-8", "replace")
        self.tail = (self.tail + text)[-32:]
        if not self.thinking and THINK_START in self.tail:
            self.thinking = True
            self.tail = self.tail[self.tail.index(THINK_START) + len(THINK_START) :]
        elif self.thinking:
            self.used += 1
            if THINK_END in self.tail:
                self.done = True


class Sampler:
    """A `llama_sampler` chain built from one request's parameters; free it with `close`.

    Order follows llama-server: logit bias, penalties, then the truncation samplers,
    temperature and the final draw. Temperature 0 means greedy (argmax after bias/penalties).
    The grammar, if any, is a separate sampler (see the module docstring).
    """

    def __init__(
        self, model: LlamaModel, params: SamplingParams, grammar_work: GrammarWork | None = None
    ) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        self._grammar: llama_cpp.llama_sampler_p | None = None
        self._eos = model.eos
        self._exhausted = False  # the grammar could not continue; see _sample_constrained
        self._candidates: _Candidates | None = None
        self._budget: _ThinkingBudget | None = None
        self._guard: TriggerGuard | None = None
        self._shortlist: llama_cpp.llama_sampler_p | None = None
        self._needed = 0  # allowed shortlist tokens that make a shortlist draw exact
        self.grammar_resamples = 0  # steps where the grammar rejected the chain's first pick
        self.grammar_full_passes = 0  # ...and the shortlist was not enough
        # Bounds the grammar's work per token (grammar_guard.py); unbounded when not given.
        self._work = grammar_work or GrammarWork(float("inf"))
        try:
            self._build(model, params)
            if params.grammar:
                self._grammar = _grammar_sampler(model, params)
                self._candidates = _Candidates(model.n_vocab)
                if params.grammar_lazy and params.grammar_triggers:
                    self._guard = TriggerGuard(model, params.grammar, params.grammar_triggers)
                self._plan_shortlist(params)
            budget = getattr(params, "reasoning_budget", -1)
            if budget is not None and budget >= 0:
                opened = bool(getattr(params, "reasoning_open", False))
                self._budget = _ThinkingBudget(model, budget, opened)
        except Exception:
            self.close()
            raise
        self._n_vocab = model.n_vocab
        # Greedy without bias, penalties, grammar or thinking budget is an argmax over the raw
        # logits. numpy's argmax returns the first maximum, as llama.cpp's greedy sampler
        # does, so the token is the same without the chain filling a candidate array of the
        # whole vocabulary (0.6-0.8 ms a token on Gemma's 262k) on the engine thread.
        self._argmax = (
            params.greedy
            and not params.logit_bias
            and not params.uses_penalties
            and self._grammar is None
            and self._budget is None
        )

    def _add(self, sampler: llama_cpp.llama_sampler_p) -> None:
        if not sampler:
            raise InvalidRequest("llama.cpp rejected a sampler parameter")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, model: LlamaModel, p: SamplingParams) -> None:
        if p.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(p.logit_bias))()
            for i, (token, bias) in enumerate(p.logit_bias.items()):
                biases[i].token = token
                biases[i].bias = bias
            self._add(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(biases), biases))
        if p.uses_penalties:
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab,
                    p.repeat_last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            )
        if p.greedy:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None and p.seed >= 0 else random.getrandbits(32)
        self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Draw a token from the logits at batch `index` (and record it as generated)."""
        if self._argmax:
            row = llama_cpp.llama_get_logits_ith(ctx, index)
            return int(np.ctypeslib.as_array(row, shape=(self._n_vocab,)).argmax())
        self._work.begin_token()
        if self._budget is not None:
            forced = self._budget.next_forced()
            if forced is not None and self._allowed(forced):
                self._accept_generated(forced)
                return forced
            if forced is not None:  # the request's grammar forbids ending the thought here
                self._budget.forced.clear()
        if self._grammar is None:
            token = llama_cpp.llama_sampler_sample(self._chain, ctx, index)  # accepts it too
        else:
            token = self._sample_constrained(ctx, index)
            self._accept_generated(token)
        if self._budget is not None:
            self._budget.observe(token)
        return token

    def _plan_shortlist(self, p: SamplingParams) -> None:
        """When a rejected draw can be redone on the most likely tokens only, exactly.

        The chain keeps at most `top_k` tokens (one when greedy) of those the grammar allows,
        the highest-logit ones. If the SHORTLIST highest logits hold that many allowed
        tokens, they are exactly the ones a full-vocabulary pass would keep, so the draw is
        the same at a fraction of the grammar's cost. Logit bias and penalties reorder
        tokens before the cut, so with them the full pass is used.
        """
        if p.logit_bias or p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            return
        needed = 1 if p.greedy else p.top_k
        if 0 < needed <= SHORTLIST // 4:
            self._needed = needed
            self._shortlist = llama_cpp.llama_sampler_init_top_k(SHORTLIST)

    def _sample_constrained(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        candidates = self._candidates
        assert candidates is not None and self._grammar is not None
        llama_cpp.llama_sampler_apply(self._chain, candidates.fill(ctx, index))
        token = candidates.selected()
        if self._work.allows(candidates.allows, self._grammar, token):
            return token
        self.grammar_resamples += 1
        if self._shortlist is not None:  # the grammar on the likeliest tokens first
            cur = candidates.fill(ctx, index)
            llama_cpp.llama_sampler_apply(self._shortlist, cur)
            self._work.filter(self._grammar, candidates.array)
            if candidates.keep_allowed() >= self._needed:
                llama_cpp.llama_sampler_apply(self._chain, cur)
                return candidates.selected()
        # Filter the whole vocabulary by the grammar, then draw again.
        self.grammar_full_passes += 1
        cur = candidates.fill(ctx, index)
        self._work.filter(self._grammar, candidates.array)
        llama_cpp.llama_sampler_apply(self._chain, cur)
        token = candidates.selected()
        if self._work.allows(candidates.allows, self._grammar, token):
            return token
        # The grammar allows nothing the chain can draw (it is complete and only an end of
        # generation fits, or every allowed token was cut by the chain). Accepting a token
        # the grammar refuses makes llama.cpp throw, which ends the process: end the answer
        # instead, without telling the grammar.
        self._exhausted = True
        return self._eos

    def _allowed(self, token: int) -> bool:
        if self._grammar is None or self._candidates is None:
            return True
        return self._candidates.allows(self._grammar, token)

    def _accept_generated(self, token: int) -> None:
        if self._grammar is not None and not self._exhausted:
            assert self._candidates is not None
            if self._guard is None or self._guard.safe_to_accept(token, self._candidates.allows):
                self._work.accept(self._candidates.allows, self._grammar, token)
            else:  # the trigger's text does not fit the grammar: go on without it
                llama_cpp.llama_sampler_free(self._grammar)
                self._grammar = None
        llama_cpp.llama_sampler_accept(self._chain, token)

    def accept(self, token: int) -> None:
        """Tell penalties about a token that was not drawn here (e.g. prompt tokens)."""
        llama_cpp.llama_sampler_accept(self._chain, token)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
        if self._shortlist:
            llama_cpp.llama_sampler_free(self._shortlist)
            self._shortlist = None


def _grammar_sampler(model: LlamaModel, p: SamplingParams) -> llama_cpp.llama_sampler_p:
    assert p.grammar
    gbnf = p.grammar.encode("utf-8")
    triggers = tuple(getattr(p, "grammar_triggers", ()) or ())
    if getattr(p, "grammar_lazy", False) and triggers:
        patterns = (ctypes.c_char_p * len(triggers))(*(t.encode("utf-8") for t in triggers))
        no_tokens = (llama_cpp.llama_token * 1)()
        sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            model.vocab, gbnf, b"root", patterns, len(triggers), no_tokens, 0
        )
    else:
        sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf, b"root")
    if not sampler:
        raise InvalidRequest("the grammar could not be parsed by llama.cpp")
    return sampler
