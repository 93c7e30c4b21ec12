"""Pinned prefixes in the prompt cache (pure: random bytes stand in for KV states, and a
fake clock stands in for time), and cuts at cache breakpoints (engine/partition.py)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from runner.cache import CacheKey, PromptCache
from runner.cache.diskformat import read_header_cuts
from runner.cache.pins import PINS_FILE, pin_id
from runner.engine.partition import (
    ExactPrefix,
    computed_prefix,
    cuts,
    next_piece,
    pieces,
    plain_prefix,
    reusable,
    truncated,
)

KEY = CacheKey(model_sha256="cd" * 32, kv_layout="ctx4096-u0-swa1-s4-b16")
STATE = 1000  # bytes per fake state; an entry of n tokens costs STATE + 4n in RAM


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Settled(PromptCache):
    """Waits for the writer after each change, so a test sees where entries settle."""

    def put(self, tokens, state, cuts=()) -> None:  # noqa: ANN001
        super().put(tokens, state, cuts)
        assert self.drain(5)

    def pin(self, tokens, cuts, ttl, hit) -> int:  # noqa: ANN001
        yielded = super().pin(tokens, cuts, ttl, hit)
        assert self.drain(5)
        return yielded


def state(seed: int, n: int = STATE) -> bytes:
    return random.Random(seed).randbytes(n)


def toks(a: int, b: int) -> list[int]:
    return list(range(a, b))


def make(tmp_path: Path, clock: Clock, ram: int = 1 << 20, disk: int = 1 << 20, **kw) -> Settled:
    return Settled(KEY, ram, disk, tmp_path, clock=clock, **kw)


def entry_size(n_tokens: int) -> int:
    return STATE + 4 * n_tokens


# -- cuts at breakpoints ------------------------------------------------------------------


def test_a_mark_is_a_cut_of_every_run_of_that_request() -> None:
    assert cuts(60, 16, marks=[20]) == [16, 20, 32, 48, 56, 60]
    assert cuts(60, 16, marks=[32, 58, 0]) == [16, 32, 48, 56, 60]  # aligned, tail, zero
    assert pieces(60, 20, 16, [20]) == [(20, 32), (32, 48), (48, 56), (56, 60)]
    for n, marks in itertools.product(range(1, 70), [(), (5,), (20, 21), (3, 40, 66)]):
        for start in [0, *cuts(n, 16, marks)[:-1]]:
            assert next_piece(n, start, 16, marks) == pieces(n, start, 16, marks)[0]


def test_reuse_stops_where_the_two_runs_cut_differently() -> None:
    marked = computed_prefix(100, 16, marks=[40])  # holds 96 tokens cut at 40 and 96
    assert marked == ExactPrefix(96, (40,))
    # The same request again: everything but the tail, through the mark.
    assert reusable(marked, common=100, n=100, block=16, marks=[40]) == 96
    # Another length, same mark: up to the last block before the other's tail cut.
    assert reusable(marked, common=120, n=120, block=16, marks=[40]) == 96
    # A request without the mark: the block before the mark (the mark split that block).
    assert reusable(marked, common=100, n=120, block=16) == 32
    # A request with a mark the sequence lacks: the same bound from the other side.
    plain = computed_prefix(100, 16)
    assert reusable(plain, common=100, n=120, block=16, marks=[40]) == 32
    # Up to the mark exactly, when it is all they share.
    assert reusable(marked, common=45, n=120, block=16, marks=[40]) == 40
    # Cutting a sequence back keeps the cuts below the cut.
    assert truncated(marked, 40) == ExactPrefix(40, (40,))
    assert truncated(marked, 39) == ExactPrefix(39, ())


def test_what_a_state_without_its_cuts_may_claim() -> None:
    """Slot files keep no cuts: whole blocks before the first other cut."""
    assert plain_prefix(computed_prefix(20, 16), 16) == 16  # n - 4 on the grid
    assert plain_prefix(computed_prefix(25, 16), 16) == 16  # n - 4 = 21 is a cut of its own
    assert plain_prefix(computed_prefix(100, 16, marks=[40]), 16) == 32
    assert plain_prefix(ExactPrefix(), 16) == 0


def test_without_marks_the_rule_is_unchanged() -> None:
    """Every reuse without marks equals the old rule: whole blocks, or all but the tail for
    a prompt of the same length."""
    rng = random.Random(7)
    for _ in range(2000):
        block = rng.choice([4, 16])
        n_have, n = rng.randint(1, 90), rng.randint(1, 90)
        common = rng.randint(0, min(n_have, n))
        have = computed_prefix(n_have, block)
        old_len = max(0, n_have - 4) // block * block if n_have > 4 else 0
        if n <= 4:
            old = 0
        elif n_have == n and common >= n - 4:
            old = n - 4
        else:
            old = min(common, old_len, n - 4) // block * block
        assert reusable(have, common, n, block) == old, (n_have, n, common, block)


# -- pins --------------------------------------------------------------------------------


def test_pinned_entry_spills_to_disk_and_survives_disk_pressure(tmp_path: Path) -> None:
    clock = Clock()
    c = make(tmp_path, clock, ram=2 * entry_size(10), disk=3 * (entry_size(10) + 300))
    c._pin_share = 0.25  # RAM holds half an entry of pins: the pinned entry moves to disk
    pinned = toks(0, 10)
    c.put(pinned, state(0), cuts=[7])
    assert c.pin(pinned[:7], [7], ttl=300, hit=False) == 0
    for i in range(1, 12):  # other prompts overflow RAM and disk several times over
        c.put(toks(i * 100, i * 100 + 10), state(i))
    hit = c.lookup(pinned + [55])
    assert hit is not None and hit.tier == "disk" and hit.n_tokens == 10
    assert hit.entry_cuts == (7,) and hit.load() == state(0)
    hit.release()
    assert c.lookup(toks(100, 110)) is None  # an unpinned one of its age is gone
    (info,) = c.pins()
    assert info["tier"] == "disk" and info["tokens"] == 7 and info["ttl_left"] == 300


def test_pinned_entries_are_evicted_from_ram_last(tmp_path: Path) -> None:
    clock = Clock()
    c = make(tmp_path, clock, ram=3 * entry_size(10), pin_share=1.0)
    c.put(toks(0, 10), state(0))
    c.pin(toks(0, 8), [8], ttl=60, hit=False)
    for i in range(1, 6):
        c.put(toks(i * 100, i * 100 + 10), state(i))
    hit = c.lookup(toks(0, 10))
    assert hit is not None and hit.tier == "ram"


def test_pinned_ram_past_its_share_moves_to_disk(tmp_path: Path) -> None:
    clock = Clock()
    c = make(tmp_path, clock, ram=4 * entry_size(10), pin_share=0.25)
    for i in range(2):
        c.put(toks(i * 100, i * 100 + 10), state(i))
        c.pin(toks(i * 100, i * 100 + 10), [], ttl=60, hit=False)
    assert [p["tier"] for p in c.pins()] == ["disk", "ram"]  # the older one moved


def test_expired_pin_is_evicted_like_any_entry(tmp_path: Path) -> None:
    clock = Clock()
    c = make(tmp_path, clock, ram=0, disk=2 * (entry_size(10) + 300))
    c.put(toks(0, 10), state(0))
    c.pin(toks(0, 10), [], ttl=5, hit=False)
    clock.t += 6
    for i in range(1, 4):
        c.put(toks(i * 100, i * 100 + 10), state(i))
    assert c.lookup(toks(0, 10)) is None
    assert c.pins() == [] and c.stats()["pins"]["expired"] == 1


def test_refresh_on_hit_and_on_repin(tmp_path: Path) -> None:
    clock = Clock()
    c = make(tmp_path, clock)
    c.put(toks(0, 20), state(0))
    c.pin(toks(0, 12), [12], ttl=10, hit=False)
    clock.t += 8
    hit = c.lookup(toks(0, 30))  # reads the pinned prefix back: its 10 s start again
    assert hit is not None
    assert c.pins()[0]["ttl_left"] == 10
    clock.t += 8
    c.pin(toks(0, 12), [12], ttl=3600, hit=True)
    (info,) = c.pins()
    assert info["ttl_left"] == 3600 and info["hits"] == 1 and info["ttl"] == 3600


def test_pins_and_their_expiry_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    c = make(tmp_path, clock, ram=0)
    c.put(toks(0, 10), state(0), cuts=[9])
    c.put(toks(100, 110), state(1))
    c.pin(toks(0, 9), [9], ttl=100, hit=False)
    c.pin(toks(100, 110), [], ttl=10, hit=False)
    c.close(5)
    raw = json.loads(next(tmp_path.rglob(PINS_FILE)).read_bytes())
    assert len(raw["pins"]) == 2
    clock.t += 50  # down for 50 s: the 10 s pin ran out meanwhile, the other has 50 left
    again = make(tmp_path, clock, ram=0)
    (info,) = again.pins()
    assert info["tokens"] == 9 and info["ttl_left"] == 50 and info["tier"] == "disk"
    hit = again.lookup(toks(0, 10))
    assert hit is not None and hit.entry_cuts == (9,) and hit.load() == state(0)
    hit.release()


def test_entry_files_keep_their_cuts(tmp_path: Path) -> None:
    c = make(tmp_path, Clock(), ram=0)
    c.put(toks(0, 30), state(0), cuts=[7, 26])
    (path,) = tmp_path.rglob("*.kvc")
    with open(path, "rb") as f:
        tokens, _, _, found = read_header_cuts(
            f, path.stat().st_size, KEY.model_sha256.encode(), KEY.kv_layout.encode()
        )
    assert found == (7, 26) and len(tokens) == 120


def test_past_the_bound_the_least_recently_used_pin_yields(tmp_path: Path) -> None:
    clock = Clock()
    per_token = (STATE + 4 * 100) / 100  # the state bytes per token the cache learns
    c = make(tmp_path, clock, disk=1 << 20, pin_share=250 * per_token / (1 << 20))
    for i in range(3):
        c.put(toks(i * 1000, i * 1000 + 100), state(i, STATE + 4 * 100))
    assert c.pin(toks(0, 100), [], ttl=60, hit=False) == 0
    clock.t += 1
    assert c.pin(toks(1000, 1100), [], ttl=60, hit=False) == 0
    clock.t += 1
    c.pin(toks(0, 100), [], ttl=60, hit=True)  # used again: now the newer of the two
    clock.t += 1
    assert c.pin(toks(2000, 2100), [], ttl=60, hit=False) == 1  # 300 tokens > 250
    left = {p["id"] for p in c.pins()}
    assert left == {pin_id(tuple(toks(0, 100))), pin_id(tuple(toks(2000, 2100)))}
    # Prefixes shared between pins count once.
    assert c.pin(toks(2000, 2050), [], ttl=60, hit=False) == 0
    # A pin bigger than the whole bound yields itself.
    c.put(toks(5000, 5300), state(9, 3 * (STATE + 4 * 100)))  # the same bytes per token
    assert c.pin(toks(5000, 5300), [], ttl=60, hit=False) >= 1
    assert all(p["tokens"] != 300 for p in c.pins())
    assert c.stats()["pins"]["yielded"] >= 2


def test_unpin_by_id(tmp_path: Path) -> None:
    c = make(tmp_path, Clock())
    c.put(toks(0, 10), state(0))
    c.pin(toks(0, 10), [], ttl=60, hit=False)
    (info,) = c.pins()
    assert not c.unpin("0" * 16)
    assert c.unpin(info["id"]) and c.pins() == []


@pytest.mark.parametrize("body", [b"{", b'{"version": 9, "pins": []}', b'{"version": 1}'])
def test_a_damaged_pins_file_is_ignored(tmp_path: Path, body: bytes) -> None:
    c = make(tmp_path, Clock(), ram=0)
    c.put(toks(0, 10), state(0))
    c.pin(toks(0, 10), [], ttl=60, hit=False)
    c.close(5)
    next(tmp_path.rglob(PINS_FILE)).write_bytes(body)
    again = make(tmp_path, Clock())
    assert again.pins() == []
    assert again.lookup(toks(0, 10)) is not None
