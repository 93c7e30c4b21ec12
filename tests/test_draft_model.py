"""Speculative decoding with a draft model: a second GGUF of the same vocabulary guesses the
next tokens and the target verifies them in its step.

No smaller model of Gemma 3's vocabulary can be downloaded here, so the draft is the bundled
model requantized to Q2_K: the same vocabulary, guesses that sometimes differ from the
target's (Q4_K_M) choice, and about the target's cost, so adaptive drafting must never use
it. The tests that check verification force drafting, by the draft model alone. As with prompt lookup, a verify decode
of several rows rounds differently from one-row decodes on some CPUs, so equality with and
without guesses is asserted for continuations the model is sure of (docs/engine-notes.md).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import llama_cpp
import openai
import pytest
from spec_cases import ASK_COPY, COPY, LOOP, assert_same_greedy_output, greedy_cases

from runner.engine import Engine, EngineConfig, ModelLoadError
from runner.engine.draft import check_vocabulary
from runner.engine.job import Completion
from runner.engine.partition import TAIL
from runner.engine.scheduler import Scheduler
from runner.engine.types import GenerationRequest, SamplingParams

FREE = "The history of the Roman empire"


@pytest.fixture(scope="module")
def draft_path(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("draft") / "gemma3-270m-q2_k.gguf"
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K
    params.allow_requantize = True
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(
        str(bundled_model_path).encode(), str(out).encode(), ctypes.byref(params)
    )
    assert rc == 0 and out.stat().st_size > 0
    return out


def _engine(bundled_model_path: Path, draft_path: Path, adaptive: bool) -> Engine:
    config = EngineConfig(
        slots=2,
        ctx_per_slot=1024,
        threads=1,
        spec_draft_max=8,
        spec_adaptive=adaptive,
        draft_model=str(draft_path),
    )
    return Engine(bundled_model_path, config, name="gemma3-drafted")


@pytest.fixture(scope="module")
def engine(bundled_model_path: Path, draft_path: Path) -> Iterator[Engine]:
    eng = _engine(bundled_model_path, draft_path, adaptive=False)
    yield eng
    eng.close()


def generate(engine: Engine, prompt: str, draft_max: int, **kw) -> Completion:
    """Greedy unless `sampling` says otherwise; guesses from the draft model alone (prompt
    lookup, which goes first when a draft model is set, is turned off)."""

    def set_draft_max(scheduler: Scheduler) -> None:
        scheduler.spec.draft_max = draft_max
        scheduler.spec.lookup = False

    engine.call_with_scheduler(set_draft_max).result(10)
    sampling = kw.pop("sampling", SamplingParams(temperature=0.0))
    kw.setdefault("id_slot", 0)
    request = GenerationRequest(engine.tokenize(prompt), sampling, **kw)
    return engine.generate(request, timeout=300)


@greedy_cases
def test_greedy_output_is_the_same_with_and_without_the_draft(engine, prompt, extra) -> None:
    plain = generate(engine, prompt, 0, max_tokens=64, cache_prompt=False, **extra)
    drafted = generate(engine, prompt, 8, max_tokens=64, cache_prompt=False, **extra)
    assert_same_greedy_output(plain, drafted, extra)


def test_guesses_depend_on_the_tokens_alone(engine) -> None:
    # The draft keeps only whole blocks it decoded in one call, so what it held from earlier
    # requests never changes a guess: the same request gets the same guesses (so the same
    # verify decodes and the same answer) cached or not, on a fresh or a used sequence.
    fresh = generate(engine, COPY, 8, max_tokens=40, cache_prompt=False, id_slot=1)
    generate(engine, LOOP, 8, max_tokens=40, cache_prompt=False)
    after_other = generate(engine, COPY, 8, max_tokens=40)
    cached = generate(engine, COPY, 8, max_tokens=40)
    assert cached.timings.cache_n > 0
    for run in (after_other, cached):
        assert run.tokens == fresh.tokens
        assert run.timings.draft_n == fresh.timings.draft_n > 0
        assert run.timings.draft_n_accepted == fresh.timings.draft_n_accepted


def test_slots_draft_side_by_side(engine) -> None:
    # Two slots generating at once, each with its own draft sequence: both answers complete,
    # with guesses verified in the shared steps.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(generate, engine, prompt, 8, max_tokens=48, id_slot=slot, ignore_eos=True)
            for slot, prompt in enumerate((COPY, LOOP))
        ]
        results = [r.result(300) for r in runs]
    for result in results:
        assert result.timings.predicted_n == 48 and len(result.tokens) == 48
        assert 0 < result.timings.draft_n_accepted <= result.timings.draft_n


ROLLBACK_PROMPTS = (
    FREE,
    "the cat sat on the mat. the cat sat on the hat. the cat sat on the",
    "<start_of_turn>user\nWrite the word 'hello' twenty times.<end_of_turn>\n"
    "<start_of_turn>model\n",
)


def test_rolled_back_slot_is_reused_exactly(engine) -> None:
    for prompt in ROLLBACK_PROMPTS:  # the first whose guesses were partly rejected
        reference = generate(engine, prompt, 0, max_tokens=48, cache_prompt=False)
        drafted = generate(engine, prompt, 8, max_tokens=48, cache_prompt=False)
        if drafted.timings.draft_n > drafted.timings.draft_n_accepted:
            break
    else:
        pytest.fail("no prompt had a rejected guess")
    again = generate(engine, prompt, 0, max_tokens=48)
    n_prompt = len(engine.tokenize(prompt))
    assert again.timings.cache_n == n_prompt - TAIL and again.timings.cache_source == "slot"
    assert again.tokens == reference.tokens


def test_a_draft_as_slow_as_the_target_is_never_used(bundled_model_path, draft_path) -> None:
    # Drafting k tokens costs about k target steps here, so no guess can pay for itself:
    # adaptive speculation leaves the draft idle, and the answer is the one without it.
    eng = _engine(bundled_model_path, draft_path, adaptive=True)
    try:
        for prompt in (COPY, FREE):
            drafted = generate(eng, prompt, 8, max_tokens=32, cache_prompt=False)
            plain = generate(eng, prompt, 0, max_tokens=32, cache_prompt=False)
            assert drafted.timings.draft_n == 0
            assert drafted.tokens == plain.tokens
    finally:
        eng.close()


def _fake_model(name: str, pieces: dict[int, bytes], n_vocab: int = 1000) -> SimpleNamespace:
    return SimpleNamespace(
        path=Path(name),
        n_vocab=n_vocab,
        bos=2,
        eos=1,
        piece=lambda token, special=False: pieces.get(token, f"<{token}>".encode()),
    )


def test_a_draft_of_another_vocabulary_is_refused() -> None:
    target = _fake_model("target.gguf", {})
    check_vocabulary(_fake_model("same.gguf", {}), target)  # type: ignore[arg-type]
    for draft, why in (
        (_fake_model("small.gguf", {}, n_vocab=900), "900 tokens against 1000"),
        (_fake_model("other.gguf", {0: b"<pad>"}), "token 0 differs"),
    ):
        with pytest.raises(ModelLoadError, match=why):
            check_vocabulary(draft, target)  # type: ignore[arg-type]


def test_draft_model_over_http(start_server, bundled_model_path, draft_path, tmp_path) -> None:
    from server_proc import MODEL, private_store, running

    store = private_store(tmp_path / "models", bundled_model_path)
    with running(start_server, store, "--draft-model", str(draft_path)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", timeout=300, max_retries=0)
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": ASK_COPY}],
            max_tokens=16,
            extra_body={"ignore_eos": True},  # a sampled end of turn would end it early
        )
        timings = (reply.model_extra or {})["timings"]
        assert reply.usage.completion_tokens == 16
        assert 0 <= timings["draft_n_accepted"] <= timings["draft_n"]
        with httpx.Client(base_url=server.url, timeout=120) as http:
            rows = http.get("/engines/ps").json()
            assert [row["draft_model"] for row in rows] == [draft_path.name]
            bad = http.post("/engines/_configure", json={"model": MODEL, "draft-model": "no/such"})
            assert bad.status_code == 400 and "no/such" in bad.text
            flags = {"model": MODEL, "runtime-flags": ["--model-draft", str(draft_path)]}
            assert http.post("/engines/_configure", json=flags).status_code == 202
