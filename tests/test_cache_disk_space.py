"""The prompt cache's disk tier leaves free space on its filesystem (pure: a fake filesystem
size stands in for the real one; the end-to-end run on a small tmpfs is in
test_cache_disk_full_e2e.py)."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from runner.cache import CacheKey, PromptCache, diskfile
from runner.cache import tiers as tiers_mod

KEY = CacheKey(model_sha256="cd" * 32, kv_layout="ctx4096-u1-swa1-s4")
STATE = 10_000


def state(seed: int) -> bytes:
    return random.Random(seed).randbytes(STATE)


def toks(i: int) -> list[int]:
    return list(range(i * 100, i * 100 + 10))


class FakeFilesystem:
    """`size` bytes, of which the cache's files use what they use."""

    def __init__(self, root: Path, size: int, used_by_others: int = 0) -> None:
        self.root = root
        self.size = size
        self.others = used_by_others

    def used(self) -> int:
        return self.others + sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def free(self) -> int:
        return max(0, self.size - self.used())

    def disk_space(self, directory: Path) -> tuple[int, int]:
        return self.size, self.free()


@pytest.fixture
def fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeFilesystem:
    fake = FakeFilesystem(tmp_path, size=100 * STATE)
    monkeypatch.setattr(diskfile, "disk_space", fake.disk_space)
    return fake


def files(cache: PromptCache) -> list[Path]:
    assert cache.drain(10)
    assert cache._files is not None
    return sorted(cache._files.dir.glob("*" + tiers_mod.SUFFIX))


def test_default_reserve_is_a_gibibyte_or_a_tenth() -> None:
    assert diskfile.default_reserve(96 << 20) == 1 << 30
    assert diskfile.default_reserve(100 << 30) == 10 << 30


def test_the_default_reserve_keeps_a_small_disk_free(tmp_path: Path, fs: FakeFilesystem) -> None:
    # A 1 MB filesystem is far below the 1 GiB reserve: nothing is written, nothing fails.
    cache = PromptCache(KEY, ram_bytes=0, disk_bytes=8 << 30, disk_dir=tmp_path)
    for i in range(5):
        cache.put(toks(i), state(i))
    assert files(cache) == []
    stats = cache.stats()
    assert stats["no_room_drops"] == 5 and stats["writes"] == 0 and stats["write_errors"] == 0
    assert stats["ram"]["pending_writes"] == 0  # dropped, not queued forever


def test_the_tier_stops_at_the_reserve_and_keeps_the_newest(
    tmp_path: Path, fs: FakeFilesystem
) -> None:
    # 100 entries' worth of disk, 97.5 reserved: room for two entries whatever --cache-disk says.
    reserve = 97 * STATE + STATE // 2
    cache = PromptCache(KEY, 0, disk_bytes=8 << 30, disk_dir=tmp_path, disk_reserve=reserve)
    for i in range(6):
        cache.put(toks(i), state(i))
        assert cache.drain(10)
        assert fs.free() >= reserve
    assert len(files(cache)) == 2
    assert cache.lookup(toks(5)) is not None and cache.lookup(toks(4)) is not None
    assert cache.lookup(toks(0)) is None  # evicted (LRU) to make room, not kept past the reserve
    assert cache.stats()["disk"]["evictions"] == 4


def test_others_filling_the_disk_shrink_the_tier(tmp_path: Path, fs: FakeFilesystem) -> None:
    cache = PromptCache(KEY, 0, disk_bytes=8 << 30, disk_dir=tmp_path, disk_reserve=10 * STATE)
    for i in range(4):
        cache.put(toks(i), state(i))
    assert len(files(cache)) == 4
    fs.others = 88 * STATE  # another program takes the disk: 12 entries' worth left, 10 kept
    cache.put(toks(9), state(9))
    assert len(files(cache)) <= 2  # the oldest made room; the reserve holds again
    assert fs.free() >= 10 * STATE
    assert cache.lookup(toks(9)) is not None


def test_a_restart_on_a_fuller_disk_trims_to_the_reserve(
    tmp_path: Path, fs: FakeFilesystem
) -> None:
    cache = PromptCache(KEY, 0, disk_bytes=8 << 30, disk_dir=tmp_path, disk_reserve=0)
    for i in range(6):
        cache.put(toks(i), state(i))
    assert len(files(cache)) == 6
    cache.close(5)
    fs.others = 93 * STATE  # meanwhile the disk filled up: one entry's worth free
    again = PromptCache(KEY, 0, disk_bytes=8 << 30, disk_dir=tmp_path, disk_reserve=3 * STATE)
    assert len(files(again)) == 3  # the oldest go until three entries' worth is free
    assert fs.free() >= 3 * STATE
    assert again.lookup(toks(5)) is not None and again.lookup(toks(0)) is None


def test_no_space_from_the_write_itself_leaves_no_partial_file(
    tmp_path: Path, fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check said there was room, then the disk filled before the write: the write fails
    # cleanly (no temporary file), the writer backs off, and the next check drops the entry.
    real_write = diskfile.write_all

    def write_all(fd: int, data: bytes) -> None:
        fs.others = fs.size  # someone took every byte
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diskfile, "write_all", write_all)
    monkeypatch.setattr(tiers_mod, "_FIRST_BACKOFF", 0.01)
    cache = PromptCache(KEY, 0, disk_bytes=8 << 30, disk_dir=tmp_path, disk_reserve=0)
    cache.put(toks(1), state(1))
    assert cache.drain(10)  # not stuck retrying a full disk
    monkeypatch.setattr(diskfile, "write_all", real_write)
    stats = cache.stats()
    assert stats["write_errors"] == 1 and stats["no_room_drops"] == 1 and stats["writes"] == 0
    assert list(tmp_path.rglob("*.tmp")) == [] and files(cache) == []
