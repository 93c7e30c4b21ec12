"""Tests for runner.cache.tiers.PromptCache (pure: random bytes stand in for KV states)."""

from __future__ import annotations

import errno
import os
import random
import struct
import threading
from pathlib import Path

import pytest

from runner.cache import CacheEntryCorrupt, CacheKey, PromptCache
from runner.cache import tiers as tiers_mod

KEY = CacheKey(model_sha256="ab" * 32, kv_layout="ctx4096-u1-swa1-s4")
STATE = 1000  # bytes per fake state; entries cost STATE + 4 * n_tokens in RAM


def state(seed: int, n: int = STATE) -> bytes:
    return random.Random(seed).randbytes(n)


def toks(*ranges: tuple[int, int]) -> list[int]:
    return [t for a, b in ranges for t in range(a, b)]


def cache_files(cache: PromptCache) -> list[Path]:
    cache.drain(5)
    d = cache._files.dir if cache._files is not None else None
    return sorted(d.glob("*" + tiers_mod.SUFFIX)) if d is not None else []


class SettledCache(PromptCache):
    """Waits for the writer after each change, so a test sees where entries settle.
    (The writer's own behaviour is tested with a plain PromptCache below.)"""

    def put(self, tokens, state) -> None:  # noqa: ANN001
        super().put(tokens, state)
        assert self.drain(5)

    def flush_to_disk(self) -> None:
        super().flush_to_disk()
        self.drain(5)


def put_one(cache: PromptCache, tokens: list[int], data: bytes) -> Path:
    """Put one entry; return the file it was written to (the cache must have ram=0)."""
    before = set(cache_files(cache))
    cache.put(tokens, data)
    (path,) = set(cache_files(cache)) - before
    return path


def make(tmp_path: Path, ram: int = 1 << 20, disk: int = 1 << 20, **kw) -> PromptCache:
    kw.setdefault("key", KEY)
    return SettledCache(ram_bytes=ram, disk_bytes=disk, disk_dir=tmp_path, **kw)


# -- RAM tier: prefixes and redundancy --------------------------------------------------


def test_put_lookup_longest_prefix(tmp_path: Path) -> None:
    c = make(tmp_path)
    a, b = toks((0, 50)), toks((0, 20), (100, 130))
    c.put(a, state(1))
    c.put(b, state(2))
    hit = c.lookup(a + [7, 8, 9])
    assert hit is not None and hit.tier == "ram"
    assert hit.n_tokens == 50 and hit.entry_tokens == tuple(a) and hit.load() == state(1)
    hit = c.lookup(b)
    assert hit is not None and hit.n_tokens == 50 and hit.load() == state(2)
    assert c.lookup([999, 1, 2]) is None
    assert c.lookup([]) is None


def test_partial_hit_and_min_tokens(tmp_path: Path) -> None:
    c = make(tmp_path)
    c.put(toks((0, 40)), state(1))
    hit = c.lookup(toks((0, 25), (500, 510)))
    assert hit is not None and hit.n_tokens == 25 and len(hit.entry_tokens) == 40
    assert c.lookup(toks((0, 25), (500, 510)), min_tokens=26) is None
    assert c.lookup(toks((0, 25)), min_tokens=25) is not None
    assert c.lookup([0], min_tokens=0) is not None  # min_tokens is at least 1


def test_redundant_prefix_skipped_and_extension_replaces(tmp_path: Path) -> None:
    c = make(tmp_path)
    c.put(toks((0, 10)), state(1))
    c.put(toks((0, 30)), state(2))  # extends: the 10-token entry is dropped
    assert c.stats()["ram"]["entries"] == 1
    c.put(toks((0, 20)), state(3))  # covered by the 30-token entry: skipped
    c.put(toks((0, 30)), state(4))  # identical tokens: skipped too
    assert c.stats()["ram"]["entries"] == 1
    hit = c.lookup(toks((0, 20)))
    assert hit is not None and hit.n_tokens == 20 and hit.load() == state(2)
    c.put(toks((0, 10), (50, 60)), state(5))  # diverges: both kept
    assert c.stats()["ram"]["entries"] == 2
    hit = c.lookup(toks((0, 10), (50, 55)))
    assert hit is not None and hit.n_tokens == 15 and hit.load() == state(5)


def test_empty_put_ignored(tmp_path: Path) -> None:
    c = make(tmp_path)
    c.put([], state(1))
    c.put([1, 2], b"")
    assert c.stats()["ram"]["entries"] == 0


# -- spilling and LRU bounds --------------------------------------------------------------


def test_ram_eviction_spills_to_disk(tmp_path: Path) -> None:
    c = make(tmp_path, ram=2 * (STATE + 40))
    for i in range(3):
        c.put(toks((i * 100, i * 100 + 10)), state(i))
    s = c.stats()
    assert s["ram"]["entries"] == 2 and s["disk"]["entries"] == 1 and s["writes"] == 1
    assert s["ram"]["evictions"] == 1 and s["ram"]["bytes"] <= s["ram"]["capacity_bytes"]
    hit = c.lookup(toks((0, 10)))
    assert hit is not None and hit.tier == "disk" and hit.load() == state(0)
    assert len(cache_files(c)) == 1


def test_lookup_refreshes_ram_recency(tmp_path: Path) -> None:
    c = make(tmp_path, ram=2 * (STATE + 40))
    c.put(toks((0, 10)), state(0))
    c.put(toks((100, 110)), state(1))
    assert c.lookup(toks((0, 10))) is not None  # entry 0 becomes most recent
    c.put(toks((200, 210)), state(2))
    hit = c.lookup(toks((100, 110)))
    assert hit is not None and hit.tier == "disk"
    hit = c.lookup(toks((0, 10)))
    assert hit is not None and hit.tier == "ram"


def test_oversized_entry_goes_straight_to_disk(tmp_path: Path) -> None:
    c = make(tmp_path, ram=100)
    c.put(toks((0, 10)), state(1))
    hit = c.lookup(toks((0, 10)))
    assert hit is not None and hit.tier == "disk" and hit.load() == state(1)


def test_unstorable_extension_keeps_shorter_entry(tmp_path: Path) -> None:
    c = make(tmp_path, ram=2 * STATE, disk=2 * STATE)
    c.put(toks((0, 10)), state(1))
    c.put(toks((0, 20)), state(2, 3 * STATE))  # fits neither tier: not stored
    hit = c.lookup(toks((0, 20)))
    assert hit is not None and hit.n_tokens == 10 and hit.load() == state(1)


def test_disk_lru_bound(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0, disk=2 * (STATE + 300))
    for i in range(4):
        c.put(toks((i * 100, i * 100 + 10)), state(i))
    s = c.stats()
    assert s["disk"]["entries"] == 2 and s["disk"]["evictions"] == 2
    assert s["disk"]["bytes"] <= s["disk"]["capacity_bytes"]
    assert len(cache_files(c)) == 2
    assert c.lookup(toks((0, 10))) is None
    assert c.lookup(toks((300, 310))) is not None
    # An entry larger than the whole disk tier is dropped, not written.
    c.put(toks((900, 910)), state(9, 5 * STATE))
    assert c.lookup(toks((900, 910))) is None and len(cache_files(c)) == 2


def test_extension_deletes_shorter_disk_file(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    assert len(cache_files(c)) == 1
    c.put(toks((0, 20)), state(2))
    files = cache_files(c)
    assert len(files) == 1 and c.stats()["disk"]["entries"] == 1
    hit = c.lookup(toks((0, 10)))
    assert hit is not None and hit.entry_tokens == tuple(toks((0, 20)))


def test_ram_preferred_at_equal_length(tmp_path: Path) -> None:
    c = make(tmp_path)
    c.put(toks((0, 10), (100, 105)), state(1))
    c.flush_to_disk()
    c.put(toks((0, 10), (200, 205)), state(2))
    hit = c.lookup(toks((0, 10), (300, 305)))
    assert hit is not None and hit.tier == "ram" and hit.n_tokens == 10
    hit = c.lookup(toks((0, 10), (100, 102)))  # longer on disk beats shorter in RAM
    assert hit is not None and hit.tier == "disk" and hit.n_tokens == 12


# -- persistence and file safety ----------------------------------------------------------


def test_persistence_across_restart(tmp_path: Path) -> None:
    c = make(tmp_path)
    entries = {i: toks((i * 100, i * 100 + 20 + i)) for i in range(5)}
    for i, t in entries.items():
        c.put(t, state(i))
    c.flush_to_disk()
    assert c.stats()["ram"]["entries"] == 0 and len(cache_files(c)) == 5
    c2 = make(tmp_path)  # simulated restart
    assert c2.stats()["disk"]["entries"] == 5
    for i, t in entries.items():
        hit = c2.lookup(t + [1])
        assert hit is not None and hit.tier == "disk" and hit.n_tokens == len(t)
        assert hit.entry_tokens == tuple(t) and hit.load() == state(i)


def test_restart_keeps_lru_order_and_applies_smaller_bound(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    paths = [put_one(c, toks((i * 100, i * 100 + 10)), state(i)) for i in range(3)]
    os.utime(paths[1], ns=(0, 0))
    hit = c.lookup(toks((100, 110)))
    assert hit is not None
    hit.load()
    hit.release()
    assert paths[1].stat().st_mtime_ns > 0  # reading a disk hit refreshes the file's mtime
    for rank, i in enumerate((2, 0, 1)):  # recency order after restart: 2 oldest
        os.utime(paths[i], ns=(10**18, 10**18 + rank * 10**9))
    c2 = make(tmp_path, disk=2 * (STATE + 300))
    assert c2.stats()["disk"]["entries"] == 2
    assert c2.lookup(toks((200, 210))) is None and not paths[2].exists()
    assert c2.lookup(toks((0, 10))) is not None and c2.lookup(toks((100, 110))) is not None


def test_other_key_entries_deleted(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    (src,) = cache_files(c)
    # Same 16-char directory prefix, different full sha: same directory, wrong header.
    other = CacheKey(model_sha256="ab" * 8 + "cd" * 24, kv_layout=KEY.kv_layout)
    c2 = make(tmp_path, key=other)
    assert c2._files.dir == c._files.dir
    assert c2.lookup(toks((0, 10))) is None and not src.exists()
    assert c2.stats()["dropped_files"] == 1
    # A file copied into another KV layout's directory is rejected too.
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    (src,) = cache_files(c)
    lay = CacheKey(model_sha256=KEY.model_sha256, kv_layout="ctx8192-u1-swa1-s4")
    probe = make(tmp_path, key=lay)
    assert probe._files.dir is not None
    dst = probe._files.dir / src.name
    dst.write_bytes(src.read_bytes())
    c3 = make(tmp_path, key=lay)
    assert c3.lookup(toks((0, 10))) is None and not dst.exists()


def test_version_mismatch_deleted(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    (f,) = cache_files(c)
    data = bytearray(f.read_bytes())
    data[8:12] = struct.pack("<I", tiers_mod.FORMAT_VERSION + 1)
    f.write_bytes(bytes(data))
    c2 = make(tmp_path)
    assert c2.stats()["disk"]["entries"] == 0 and not f.exists()


def test_corrupted_payload_detected_and_deleted(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    (f,) = cache_files(c)
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    c2 = make(tmp_path)  # startup reads headers only: the damage is found on load
    hit = c2.lookup(toks((0, 10)))
    assert hit is not None and hit.tier == "disk"
    with pytest.raises(CacheEntryCorrupt):
        hit.load()
    assert not f.exists()
    assert c2.lookup(toks((0, 10))) is None
    s = c2.stats()
    assert s["load_errors"] == 1 and s["disk"]["entries"] == 0 and s["disk"]["bytes"] == 0


def test_corrupted_tokens_detected_at_startup(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    (f,) = cache_files(c)
    data = bytearray(f.read_bytes())
    data[len(data) - STATE - 4] ^= 0x01  # last token
    f.write_bytes(bytes(data))
    c2 = make(tmp_path)
    assert c2.stats()["disk"]["entries"] == 0 and not f.exists()


def test_file_vanished_before_load(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    hit = c.lookup(toks((0, 10)))
    assert hit is not None
    for f in cache_files(c):
        f.unlink()
    with pytest.raises(CacheEntryCorrupt):
        hit.load()
    assert c.stats()["disk"]["entries"] == 0


def test_truncated_and_tmp_files_cleaned_at_startup(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    f1, f2, f3 = (put_one(c, toks((i * 100, i * 100 + 10)), state(i + 1)) for i in range(3))
    assert c._files.dir is not None
    f1.write_bytes(f1.read_bytes()[:-10])  # payload cut short
    f2.write_bytes(f2.read_bytes()[:20])  # header cut short
    stray = c._files.dir / (f3.name + ".deadbeef.tmp")
    stray.write_bytes(b"partial")
    alien = c._files.dir / "notes.txt"
    alien.write_text("not ours")
    c2 = make(tmp_path)
    assert not f1.exists() and not f2.exists() and not stray.exists()
    assert f3.exists() and alien.exists()
    assert c2.stats()["disk"]["entries"] == 1 and c2.stats()["dropped_files"] == 2
    hit = c2.lookup(toks((200, 210)))
    assert hit is not None and hit.load() == state(3)


def test_redundant_files_dropped_at_startup(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0)
    c.put(toks((0, 10)), state(1))
    (short,) = cache_files(c)
    kept = short.read_bytes()
    c.put(toks((0, 20)), state(2))
    short.write_bytes(kept)  # as if a crash left the superseded file behind
    c2 = make(tmp_path)
    assert c2.stats()["disk"]["entries"] == 1 and not short.exists()


def test_path_components_sanitized(tmp_path: Path) -> None:
    key = CacheKey(model_sha256="../../evil", kv_layout="a/b\\..\\c")
    c = make(tmp_path, key=key, ram=0)
    c.put([1, 2, 3], state(1))
    assert c._files.dir is not None and c._files.dir.resolve().is_relative_to(tmp_path.resolve())
    assert len(c._files.dir.relative_to(tmp_path).parts) == 2
    hit = make(tmp_path, key=key).lookup([1, 2, 3])
    assert hit is not None and hit.load() == state(1)
    empty = make(tmp_path, key=CacheKey(model_sha256="..", kv_layout=""))
    assert empty._files.dir is not None and len(empty._files.dir.relative_to(tmp_path).parts) == 2


def test_persist_false_never_touches_disk(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    c = SettledCache(KEY, ram_bytes=STATE + 40, disk_bytes=1 << 20, disk_dir=d, persist=False)
    for i in range(3):
        c.put(toks((i * 100, i * 100 + 10)), state(i))
    c.flush_to_disk()
    assert not d.exists()
    s = c.stats()
    assert s["disk"]["enabled"] is False and s["disk"]["entries"] == 0 and s["writes"] == 0
    assert s["ram"]["entries"] == 1  # flush with no disk keeps RAM


def test_clear_removes_files(tmp_path: Path) -> None:
    c = make(tmp_path, ram=STATE + 40)
    for i in range(3):
        c.put(toks((i * 100, i * 100 + 10)), state(i))
    c.clear()
    assert cache_files(c) == [] and c.lookup(toks((200, 210))) is None
    s = c.stats()
    assert s["ram"]["entries"] == s["disk"]["entries"] == 0 and s["disk"]["bytes"] == 0


# -- degraded disks -----------------------------------------------------------------------


def test_disk_dir_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    c = SettledCache(KEY, ram_bytes=STATE + 40, disk_bytes=1 << 20, disk_dir=blocker)
    for i in range(3):
        c.put(toks((i * 100, i * 100 + 10)), state(i))
    c.flush_to_disk()
    s = c.stats()
    assert s["disk"]["enabled"] is False and s["write_errors"] == 1
    assert s["ram"]["entries"] == 1


def test_a_full_disk_pauses_writes_and_they_resume(tmp_path: Path, monkeypatch) -> None:
    from runner.cache import diskfile

    real_replace = os.replace
    full = threading.Event()
    full.set()

    def replace(src, dst):  # noqa: ANN001, ANN202
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(diskfile.os, "replace", replace)
    monkeypatch.setattr(tiers_mod, "_FIRST_BACKOFF", 0.01)
    c = PromptCache(KEY, ram_bytes=0, disk_bytes=1 << 20, disk_dir=tmp_path)
    for i in range(3):
        c.put(toks((i * 100, i * 100 + 10)), state(i))  # returns at once, never raises
    assert not c.drain(0.3)
    s = c.stats()
    assert s["write_errors"] >= 1 and s["writes"] == 0 and s["disk"]["writable"] is False
    hit = c.lookup(toks((100, 110)))  # still served from memory meanwhile
    assert hit is not None and hit.tier == "ram" and hit.load() == state(1)
    assert not list(c._files.dir.glob("*.tmp"))  # no partial file left behind
    full.clear()  # space returns
    assert c.drain(10)
    s = c.stats()
    assert s["writes"] == 3 and s["disk"]["entries"] == 3 and s["disk"]["writable"] is True


def test_what_cannot_be_written_by_shutdown_is_counted(tmp_path: Path, monkeypatch) -> None:
    from runner.cache import diskfile

    def no_space(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diskfile.os, "replace", no_space)
    c = PromptCache(KEY, ram_bytes=1 << 20, disk_bytes=1 << 20, disk_dir=tmp_path)
    c.put(toks((0, 10)), state(1))
    c.flush_to_disk()
    c.close(timeout=0.2)
    assert c.stats()["lost_entries"] == 1


def test_a_disk_hit_being_read_is_not_evicted(tmp_path: Path) -> None:
    c = make(tmp_path, ram=0, disk=2 * (STATE + 300))
    c.put(toks((0, 10)), state(0))
    hit = c.lookup(toks((0, 10)))
    assert hit is not None and hit.tier == "disk"
    for i in range(1, 4):  # enough to evict entry 0, were it not pinned
        c.put(toks((i * 100, i * 100 + 10)), state(i))
    assert hit.load() == state(0)
    hit.release()
    c.put(toks((900, 910)), state(9))
    assert c.lookup(toks((0, 10))) is None  # unpinned: evicted now


def test_flush_failure_keeps_entries_in_ram(tmp_path: Path, monkeypatch) -> None:
    def broken(*a, **k):
        raise OSError(errno.EIO, "I/O error")

    c = make(tmp_path)
    c.put(toks((0, 10)), state(1))
    from runner.cache import diskfile

    monkeypatch.setattr(diskfile.os, "replace", broken)
    PromptCache.flush_to_disk(c)
    hit = c.lookup(toks((0, 10)))
    assert hit is not None and hit.tier == "ram" and hit.load() == state(1)


# -- stats and threads --------------------------------------------------------------------


def test_stats_counters(tmp_path: Path) -> None:
    c = make(tmp_path, ram=STATE + 40)
    c.put(toks((0, 10)), state(0))
    c.put(toks((100, 110)), state(1))  # spills entry 0
    assert c.lookup(toks((100, 110))) is not None  # ram hit
    assert c.lookup(toks((0, 10))) is not None  # ram miss, disk hit
    assert c.lookup([5000]) is None  # miss everywhere
    c.record_restore(10, "ram")
    c.record_restore(7, "disk")
    s = c.stats()
    assert s["lookups"] == 3 and s["misses"] == 1
    assert (s["ram"]["hits"], s["ram"]["misses"]) == (1, 2)
    assert (s["disk"]["hits"], s["disk"]["misses"]) == (1, 1)
    assert s["ram"]["restored_tokens"] == 10 and s["disk"]["restored_tokens"] == 7
    assert s["writes"] == 1 and s["write_bytes"] == s["disk"]["bytes"] > STATE
    assert s["ram"]["bytes"] == STATE + 40 and s["write_errors"] == s["load_errors"] == 0


def test_concurrent_stats_during_puts(tmp_path: Path) -> None:
    c = make(tmp_path, ram=4 * (STATE + 40), disk=8 * (STATE + 300))
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                c.stats()
                c.lookup(toks((0, 5)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    rng = random.Random(0)
    for i in range(200):
        c.put([rng.randrange(4) for _ in range(rng.randrange(1, 12))], state(i))
    stop.set()
    t.join()
    assert not errors
    s = c.stats()
    assert s["ram"]["bytes"] <= s["ram"]["capacity_bytes"]
    assert s["disk"]["bytes"] <= s["disk"]["capacity_bytes"]
    assert len(cache_files(c)) == s["disk"]["entries"]
    # The no-prefix invariant holds across both tiers.
    keys = list(c._ram.lru) + list(c._disk.lru)
    for a in keys:
        for b in keys:
            assert a is b or b[: len(a)] != a
