"""Every prompt-cache path on every kind of architecture (tests/model_zoo.py): the answer
with the cache is the answer without it.

Two servers load the same tiny models: `reference` computes every prompt from scratch
(`cache_prompt: false`), `cached` goes through the cache paths in order: a prefix reused in
its slot, copied to another slot, restored from the RAM tier, seeded sampling with `n`
choices, speculation, and after a restart from the disk tier. Greedy and seeded answers must
match the reference's token for token. Models whose state can be cut back (attention KV)
must also show the reuse (`cache_n`, `cache_source`). Recurrent and hybrid ones reuse a prefix
in its own slot through state checkpoints (engine/checkpoints.py); elsewhere they may fall
back to recomputing, but never to another answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from model_zoo import ZOO, zoo_store

from runner.engine import EngineConfig
from runner.memory import estimate
from runner.store import ModelStore

# ~300 tokens of ordinary text: past the minimum restored prefix (64) by several blocks.
SHARED = (
    "The harbour town woke before the sun. Fishermen checked their nets, bakers pulled the "
    "first loaves from stone ovens, and the ferry captain counted crates of apples, wool and "
    "copper wire bound for the islands. Along the quay, gulls argued over scraps while a "
    "schoolteacher walked her class toward the lighthouse to learn how lenses bend light. "
) * 4
# The first tail is long: its conversation, cached past the shared text by more than the
# minimum restore (64 tokens), continues from the RAM and the disk tier below.
LONG_TAIL = (
    " Question one: the teacher asked which crate would reach the farthest island first, and"
    " why the captain counted the copper wire twice before the ferry left at noon."
) * 2
TAILS = [LONG_TAIL, "Question two: what", "Question three: where", "Four: why"]
FOLLOW_UPS = [" And then what happened?", " Finally, who was right?"]


def complete(server: Any, model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    body |= {"ignore_eos": True, **extra}
    r = httpx.post(server.base_url + "/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def texts(answer: dict[str, Any]) -> list[str]:
    return [c["text"] for c in sorted(answer["choices"], key=lambda c: c["index"])]


@pytest.fixture(scope="module")
def zoo_models(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo_store(tmp_path_factory.mktemp("zoo"), bundled_model_path)


@pytest.fixture(scope="module")
def servers(start_server: Callable[..., Any], zoo_models: Path) -> Iterator[tuple[Any, Any]]:
    env = {"RUNNER_MODELS_DIR": str(zoo_models)}
    common = ("--slots", "2", "--ctx-size", "1024", "--max-models", "4")
    reference = start_server(*common, "--no-persist", "--draft-max", "0", env=env)
    cached = start_server(*common, env=env)
    yield reference, cached
    reference.stop()
    cached.stop()


@pytest.mark.parametrize("kind", list(ZOO))
def test_cached_answers_equal_uncached(kind: str, servers: tuple[Any, Any]) -> None:
    reference, cached = servers
    model, trimmable, windowed = f"zoo/{kind}", ZOO[kind].trimmable, ZOO[kind].windowed
    prompts = [SHARED + tail for tail in TAILS]
    prompts.append(prompts[0] + FOLLOW_UPS[0])  # 4: a conversation going on
    prompts.append(prompts[4] + FOLLOW_UPS[1])  # 5: and on, after a restart
    expected = [texts(complete(reference, model, p, cache_prompt=False)) for p in prompts]

    def check(
        i: int, source: str, every_kind: bool = False, cut_back: bool = False, **extra: Any
    ) -> None:
        """`every_kind`: a recurrent state serves it too (a checkpoint in the slot, or a
        cached state whose whole length the prompt extends). `cut_back`: a state copied or
        restored from elsewhere is cut back before its end (to a block boundary, at least);
        it holds only the last window of its sliding-window layers, so with those it is
        recomputed instead (still the same answer)."""
        answer = complete(cached, model, prompts[i], **extra)
        assert texts(answer) == expected[i], f"{kind}: prompt {i} via {source}"
        timings = answer["timings"]
        if (trimmable or every_kind) and not (windowed and cut_back):
            assert timings["cache_source"] == source, (kind, i, timings)
            assert timings["cache_n"] >= (256 if trimmable else 128), (kind, i, timings)

    complete(cached, model, SHARED + "Warm up.", id_slot=0)
    check(0, "slot", every_kind=True, id_slot=0)  # the prefix, in its own slot
    check(1, "slot", every_kind=True, cut_back=True, id_slot=1)  # copied from slot 0
    # Push the prefix out of both slots: each slot's prefix goes to the RAM tier.
    complete(cached, model, "Unrelated one. " * 30, id_slot=0)
    complete(cached, model, "Unrelated two. " * 30, id_slot=1)
    check(2, "ram", cut_back=True, id_slot=0)  # the shared text, from a longer entry
    check(4, "ram", every_kind=True, id_slot=1)  # the first conversation goes on

    seeded = {"temperature": 0.9, "seed": 11, "n": 2}
    want = texts(complete(reference, model, prompts[3], cache_prompt=False, **seeded))
    got = complete(cached, model, prompts[3], **seeded)
    assert texts(got) == want, f"{kind}: seeded n=2"

    cached.restart()
    check(5, "disk", every_kind=True)


def test_memory_estimate_counts_recurrent_state_not_kv(zoo_models: Path) -> None:
    store = ModelStore(zoo_models, bundled_default=False)
    meta = {kind: store.get(f"zoo/{kind}").metadata for kind in ZOO}
    # llama.cpp's sizes (f32): Mamba 2 keeps (d_conv - 1) x (d_inner + 2 x groups x d_state)
    # conv columns and d_state x d_inner scan state per layer; LFM2 (L - 1) x n_embd per
    # convolution layer; attention-only models none.
    assert meta["recurrent"].recurrent_state_bytes == 2 * 4 * (3 * (128 + 2 * 16) + 16 * 128)
    assert meta["hybrid"].recurrent_state_bytes == 2 * 4 * 2 * 64
    assert meta["dense"].recurrent_state_bytes is None
    assert (meta["hybrid"].attention_layers, meta["recurrent"].attention_layers) == (2, 0)
    small, large = EngineConfig(slots=2, ctx_per_slot=512), EngineConfig(slots=2, ctx_per_slot=8192)
    recurrent = [estimate(meta["recurrent"], 1, c).kv_cache for c in (small, large)]
    assert recurrent[0] == recurrent[1] == 2 * 9 * meta["recurrent"].recurrent_state_bytes
    hybrid = [estimate(meta["hybrid"], 1, c).kv_cache for c in (small, large)]
    dense = [estimate(meta["dense"], 1, c).kv_cache for c in (small, large)]
    assert hybrid[1] - hybrid[0] == dense[1] - dense[0]  # 2 attention layers of 1 KV head
