"""Grammars cannot hold the engine: their size is bounded before llama.cpp parses them, and
their work per token is bounded while the answer is sampled (engine/grammar_guard.py).

The attacks: a 60-byte grammar whose parse stacks triple with every character (every
token it allows is a run of "a"s, so the growth does not depend on what the model picks),
a grammar of thousands of alternatives (each candidate token is checked against each one),
and a 1 MB grammar of 100,000 alternatives (parsing it alone takes seconds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import llama_cpp
import openai
import pytest

from runner.engine.grammar_guard import GrammarCancelled, GrammarTooCostly, GrammarWork
from runner.engine.model import LlamaModel
from runner.engine.sampling import _Candidates

# Every token this grammar allows is a run of "a": each "a" triples the parse stacks.
TRIPLING = 'root ::= s\ns ::= "a" s t | "a" s u | "a" s v\nt ::= "b"\nu ::= "c"\nv ::= "d"\n'


def alternatives(n: int) -> str:
    return "root ::= (" + " | ".join(f'"w{i:06d}"' for i in range(n)) + ")+\n"


@pytest.fixture(scope="module")
def model(bundled_model_path: Path) -> LlamaModel:
    return LlamaModel(bundled_model_path)


def grammar(model: LlamaModel, gbnf: str) -> llama_cpp.llama_sampler_p:
    sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    assert sampler
    return sampler


def test_a_tripling_grammar_is_cut_before_an_accept_runs_away(model: LlamaModel) -> None:
    (a,) = model.tokenize("a", add_special=False, parse_special=False)
    candidates = _Candidates(model.n_vocab)
    g = grammar(model, TRIPLING)
    work = GrammarWork(budget=0.05)
    accepted = 0
    with pytest.raises(GrammarTooCostly, match="too ambiguous"):
        for _ in range(40):  # 3**40 stacks if nothing stopped it
            work.begin_token()
            assert work.allows(candidates.allows, g, a)
            work.accept(candidates.allows, g, a)
            accepted += 1
    assert 3 <= accepted < 20
    llama_cpp.llama_sampler_free(g)


def test_a_vocabulary_pass_over_many_alternatives_is_priced_and_refused(
    model: LlamaModel,
) -> None:
    candidates = _Candidates(model.n_vocab)
    g = grammar(model, alternatives(3000))  # a full pass: ~262k x 3000 stack checks
    work = GrammarWork(budget=0.05)
    candidates.data["id"] = candidates.ids
    candidates.data["logit"] = 0.0
    candidates.array.size = model.n_vocab
    work.begin_token()
    with pytest.raises(GrammarTooCostly):
        work.filter(g, candidates.array)
    assert work.spent < 0.05  # refused on the price of the first chunks, not after the work
    llama_cpp.llama_sampler_free(g)


def test_a_vocabulary_pass_stops_when_the_request_is_cancelled(model: LlamaModel) -> None:
    candidates = _Candidates(model.n_vocab)
    g = grammar(model, alternatives(300))
    checks = 0

    def cancelled() -> bool:
        nonlocal checks
        checks += 1
        return checks > 2  # the client leaves during the second chunk

    work = GrammarWork(budget=1000.0, cancelled=cancelled)
    candidates.data["id"] = candidates.ids
    candidates.array.size = model.n_vocab
    work.begin_token()
    with pytest.raises(GrammarCancelled):
        work.filter(g, candidates.array)
    assert checks == 3
    llama_cpp.llama_sampler_free(g)


def test_chunked_passes_allow_what_one_pass_allows(model: LlamaModel) -> None:
    import numpy as np
    from llama_cpp.llama_grammar import JSON_GBNF

    one, chunked = _Candidates(model.n_vocab), _Candidates(model.n_vocab)
    for c in (one, chunked):
        c.data["id"] = c.ids
        c.data["logit"] = 0.0
        c.array.size = model.n_vocab
    g1, g2 = grammar(model, JSON_GBNF), grammar(model, JSON_GBNF)
    llama_cpp.llama_sampler_apply(g1, llama_cpp.ctypes.byref(one.array))
    GrammarWork(budget=1000.0).filter(g2, chunked.array)
    assert np.array_equal(one.data["logit"], chunked.data["logit"])
    assert 0 < int(np.isfinite(one.data["logit"]).sum()) < 1000
    llama_cpp.llama_sampler_free(g1)
    llama_cpp.llama_sampler_free(g2)


# -- through the server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def grammar_server(start_server: Callable[..., object]) -> object:
    return start_server(
        "--model", "ai/gemma3", "--slots", "2", "--ctx-size", "512", "--idle-timeout", "-1"
    )


def client(server: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=300)


def constrained(server: object, gbnf: str, **kw: object) -> openai.types.Completion:
    return client(server).completions.create(
        model="ai/gemma3",
        prompt=kw.pop("prompt", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        max_tokens=kw.pop("max_tokens", 64),
        temperature=kw.pop("temperature", 0),
        extra_body={"grammar": gbnf, "ignore_eos": True, **kw},
    )


def still_serving(server: object) -> None:
    done = client(server).completions.create(
        model="ai/gemma3", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert done.usage.completion_tokens == 4


def test_a_tripling_grammar_fails_with_a_clear_error(grammar_server: object) -> None:
    with pytest.raises(openai.BadRequestError, match="grammar needs more than"):
        constrained(grammar_server, TRIPLING)
    still_serving(grammar_server)


def test_a_grammar_of_thousands_of_alternatives_fails_with_a_clear_error(
    grammar_server: object,
) -> None:
    # Sampled without a shortlist (top_k 0), so a rejected draw checks the whole vocabulary.
    with pytest.raises(openai.BadRequestError, match="too many alternatives"):
        constrained(grammar_server, alternatives(3000), temperature=0.8, top_k=0, seed=7)
    still_serving(grammar_server)


def test_a_megabyte_grammar_is_refused_before_it_is_parsed(grammar_server: object) -> None:
    huge = alternatives(100_000)
    assert len(huge) > 1_000_000
    with pytest.raises(openai.BadRequestError, match="grammar is larger than"):
        constrained(grammar_server, huge)
    still_serving(grammar_server)


def test_a_client_that_leaves_cancels_its_grammar_work(start_server: Callable[..., object]) -> None:
    # One slot and a budget nothing reaches: only the cancel frees the slot before this
    # request's 400 tokens (each a vocabulary pass of seconds) are done. (That the cancel is
    # seen inside a pass, not after it, is the unit test above.)
    server = start_server(
        "--model", "ai/gemma3", "--slots", "1", "--ctx-size", "512", "--idle-timeout", "-1",
        "--grammar-step-budget", "1h",
    )  # fmt: skip
    body = {
        "model": "ai/gemma3", "prompt": "Words:", "max_tokens": 400, "stream": True,
        "temperature": 0.8, "top_k": 0, "seed": 3, "ignore_eos": True,
        "grammar": alternatives(3000),
    }  # fmt: skip
    with httpx.Client(base_url=server.base_url, timeout=300) as http:
        with http.stream("POST", "/completions", json=body) as response:
            assert response.status_code == 200
        # The stream is closed: the engine notices within one chunk of its current pass.
        still_serving(server)
