"""Per-request llama.cpp sampler chains."""

from __future__ import annotations

import random

import llama_cpp

from .model import LlamaModel
from .types import InvalidRequest, SamplingParams


class Sampler:
    """A `llama_sampler` chain built from one request's parameters; free it with `close`.

    Order follows llama-server: logit bias, penalties, grammar, then the truncation samplers,
    temperature and the final draw. Temperature 0 means greedy (argmax after bias/penalties).
    """

    def __init__(self, model: LlamaModel, params: SamplingParams) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        try:
            self._build(model, params)
        except Exception:
            self.close()
            raise

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
        if p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab,
                    p.repeat_last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            )
        if p.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, p.grammar.encode("utf-8"), b"root"
            )
            if not grammar:
                raise InvalidRequest("the grammar could not be parsed by llama.cpp")
            self._add(grammar)
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
        """Draw a token from the logits at batch `index` (the chain also records it)."""
        return llama_cpp.llama_sampler_sample(self._chain, ctx, index)

    def accept(self, token: int) -> None:
        """Tell penalties/grammar about a token that was not drawn here (e.g. prompt tokens)."""
        llama_cpp.llama_sampler_accept(self._chain, token)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
