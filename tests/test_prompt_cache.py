"""A prompt cache that outlives slots, idle unloads and restarts (real server)."""

from __future__ import annotations

import time

import httpx
import pytest
from server_proc import metric

MODEL = "ai/gemma3"
pytestmark = pytest.mark.timeout(900)


def system_prompt(seed: int, words: int) -> str:
    topics = ["rivers", "mountains", "trains", "gardens", "stars", "ships", "bridges", "forests"]
    topic = topics[seed % len(topics)]
    body = " ".join(
        f"Fact {i} about {topic}: item {seed}-{i} is worth remembering." for i in range(words)
    )
    return f"You are assistant number {seed}, an expert on {topic}. {body}"


def ask(client: httpx.Client, messages: list[dict], **extra) -> dict:
    body = {"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 0, **extra}
    response = client.post("/engines/llama.cpp/v1/chat/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def conversation(system: str, question: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def going_on(messages: list[dict], reply: dict) -> list[dict]:
    """The conversation's next turn: the answer, then another question."""
    answer = {"role": "assistant", "content": reply["choices"][0]["message"]["content"]}
    return [*messages, answer, {"role": "user", "content": "What is fact 3 about?"}]


def assert_restored_matches_uncached(
    client: httpx.Client, messages: list[dict], source: str
) -> None:
    """The conversation goes on from a restored prefix. (Gemma 3's sliding-window layers are
    saved with their last 512 positions only, so a restored prefix longer than that serves a
    prompt that extends it, not one that leaves it earlier: docs/architectures.md.)"""
    cached = ask(client, messages)
    timings = cached["timings"]
    assert timings["cache_n"] >= 1000, timings
    assert timings["cache_source"] == source, timings
    assert cached["usage"]["prompt_tokens_details"]["cached_tokens"] == timings["cache_n"]
    uncached = ask(client, messages, cache_prompt=False)
    assert uncached["timings"]["cache_n"] == 0
    assert (
        cached["choices"][0]["message"]["content"] == uncached["choices"][0]["message"]["content"]
    )


def test_cache_survives_a_server_restart(start_server):
    server = start_server("--slots", "2", "--ctx-size", "2048")
    messages = conversation(system_prompt(1, 90), "Which fact comes first?")
    with httpx.Client(base_url=server.url) as client:
        first = ask(client, messages)
        assert first["usage"]["prompt_tokens"] > 1000
    assert server.stop() == 0  # SIGTERM: slots are written to the disk tier
    server.start()
    with httpx.Client(base_url=server.url) as client:
        assert_restored_matches_uncached(client, going_on(messages, first), "disk")


def test_cache_survives_an_idle_unload(start_server):
    server = start_server("--slots", "2", "--ctx-size", "2048", "--idle-timeout", "2s")
    messages = conversation(system_prompt(2, 90), "Which fact comes first?")
    with httpx.Client(base_url=server.url) as client:
        first = ask(client, messages)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not client.get("/engines/ps").json():
                break
            time.sleep(0.5)
        assert client.get("/engines/ps").json() == []
        assert_restored_matches_uncached(client, going_on(messages, first), "disk")


def test_more_users_than_slots_keep_their_prefixes(start_server):
    """8 users with distinct ~500-token system prompts take turns on 2 slots."""
    server = start_server("--slots", "2", "--ctx-size", "2048", "--no-persist")
    users = [conversation(system_prompt(u, 40), "Tell me one fact.") for u in range(8)]
    with httpx.Client(base_url=server.url) as client:
        ram_hits = metric(client, "runner:prompt_cache_hits_total", tier="ram")
        for round_ in range(3):
            for u, messages in enumerate(users):
                reply = ask(client, messages, max_tokens=6)
                timings = reply["timings"]
                if round_ == 0:
                    assert reply["usage"]["prompt_tokens"] >= 500
                else:
                    assert timings["cache_n"] >= 500, (round_, u, timings)
                messages += [
                    {"role": "assistant", "content": reply["choices"][0]["message"]["content"]},
                    {"role": "user", "content": f"And another one, please ({round_})."},
                ]
        # 8 prefixes take turns on 2 slots: in rounds 2 and 3 each comes back from the RAM tier.
        assert metric(client, "runner:prompt_cache_hits_total", tier="ram") - ram_hits >= 8


def test_slot_files_save_erase_restore(server):
    with httpx.Client(base_url=server.url, timeout=300) as client:
        ask(client, conversation("You keep notes.", "Note: the key is under the mat."), id_slot=1)

        def cached() -> int:
            slots = client.get("/slots", params={"model": MODEL}).json()
            return next(s for s in slots if s["id"] == 1)["n_cached_tokens"]

        before = cached()
        assert before > 0
        url = "/slots/1"
        saved = client.post(url, params={"action": "save"}, json={"filename": "notes.bin"})
        assert saved.status_code == 200, saved.text
        # A slot file keeps the prefix a later prompt may reuse: whole prompt blocks.
        n_saved = saved.json()["n_saved"]
        assert 0 < n_saved <= before and n_saved % 16 == 0
        assert client.post(url, params={"action": "erase"}).status_code == 200
        assert cached() == 0
        restored = client.post(url, params={"action": "restore"}, json={"filename": "notes.bin"})
        assert restored.status_code == 200, restored.text
        assert cached() == n_saved
        bad = client.post(url, params={"action": "save"}, json={"filename": "../escape"})
        assert bad.status_code == 400
        assert client.post("/slots/99", params={"action": "erase"}).status_code == 400
