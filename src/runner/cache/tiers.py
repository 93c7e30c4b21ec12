"""Tiered prompt cache: saved KV sequence states in host RAM, spilling to disk.

A slot's sequence state (bytes from ``llama_state_seq_get_data``) is only valid for the
tokens it was computed from and for the model and KV layout that produced it, so every
entry is stored with its token list under a `CacheKey`. RAM is an LRU bounded by bytes;
RAM victims spill to disk, itself an LRU bounded by bytes, and survive restarts.

Invariant: no entry's tokens are a prefix of (or equal to) another entry's, across both
tiers. A longer entry serves every query a prefix entry could (KV is truncated after
restore), so `put` skips covered entries and drops the shorter ones it extends. It also
means at most one entry per tier can be a prefix of any given token list.

Disk format, one file per entry (``<sha256(tokens)[:32]>.kvc``): a header (magic, format
version, header length, n_tokens, state length, sha256 over tokens+state, model sha256,
KV layout), then the tokens as little-endian int32, then the state. Writes go to a
``*.tmp`` in the same directory, are fsynced and renamed into place. Startup reads only
headers and tokens; the checksum is verified on `CacheHit.load`.

No disk I/O happens on the caller's thread (the engine's step): RAM victims wait in a
`pending` tier, still in memory and still found by lookups, until a writer thread has
written them; disk hits are read by `CacheHit.load`, which the engine runs on an I/O
thread while the entry is pinned against eviction. A full disk pauses the writer with
backoff and it retries; what cannot be written before shutdown is logged.

The disk tier never fills its filesystem: before each write the writer asks how much the
filesystem has free, and the tier's bound shrinks so that a reserve stays free (by default
max(1 GiB, 10% of the filesystem)): older entries are evicted to make room, and an entry
that still does not fit is dropped, not written.

Clients may pin prefixes for a while (`pin`, cache/pins.py): an entry holding a pinned
prefix is evicted from either tier only when no unpinned entry is left to evict (and from
disk never for an unpinned newcomer); past `pin_share` of the RAM tier pinned entries spill
to disk (still pinned); pinned bytes past `pin_share` of the tier pins end up in (disk, or
RAM without one) make the least recently used pin yield. Pins are saved in ``pins.json``
by the writer thread.

One cache directory belongs to one process: startup deletes stray ``*.tmp`` files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runner.cache.diskfile import EntryFiles
from runner.cache.diskformat import (
    FORMAT_VERSION,
    SUFFIX,
    InvalidEntry,
    decode_tokens,
    safe_component,
    unlink_quietly,
)
from runner.cache.entries import CacheEntryCorrupt, CacheHit, CacheKey, Entry, Tier, TierIndex
from runner.cache.pinned import Pinning
from runner.cache.pins import PINS_FILE, read_pins_file

__all__ = ["CacheEntryCorrupt", "CacheHit", "CacheKey", "PromptCache", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.5  # seconds before retrying a failed write; doubles per failure
_MAX_BACKOFF = 30.0


class PromptCache(Pinning):
    """Prompt-prefix states for one `CacheKey`: an LRU in RAM spilling to an LRU on disk.

    Thread-safe: one lock guards the indexes and counters; file I/O happens outside it, on
    the writer thread or in `CacheHit.load`. Never raises on disk trouble: failures are
    logged and counted, and writes resume when the disk has room again.
    """

    def __init__(
        self, key: CacheKey, ram_bytes: int, disk_bytes: int, disk_dir: Path | None,
        persist: bool = True, disk_reserve: int | None = None, pin_share: float = 0.5,
        bytes_per_token: float = 0.0, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.key = key
        self._init_pins(pin_share, bytes_per_token, clock)
        self._reserve = disk_reserve  # free bytes to leave on the filesystem (None: default)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ram = TierIndex(ram_bytes)
        # Waiting for the writer (a full disk can hold entries here for a while): bounded
        # by the RAM tier, or 64 MiB when there is none. Counted as RAM on hits.
        self._pending = TierIndex(max(ram_bytes, 64 << 20))
        self._disk = TierIndex(disk_bytes)
        self._unlinks: list[Path] = []
        self._lookups = self._misses = self._writes = self._write_bytes = 0
        self._write_errors = self._load_errors = self._dropped_files = self._lost = 0
        self._no_room = 0  # entries dropped because the filesystem reached its reserve
        self._failures = 0  # consecutive write failures
        self._retry_at = 0.0
        self._writing = False
        self._closing = False
        self._writer_running = False
        self._files: EntryFiles | None = None
        if persist and disk_dir is not None and disk_bytes > 0:
            d = Path(disk_dir) / safe_component(key.model_sha256[:16])
            d = d / safe_component(key.kv_layout)
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("prompt cache: disk tier disabled, cannot create %s: %s", d, exc)
                self._write_errors += 1
            else:
                self._files = EntryFiles(d, key.model_sha256, key.kv_layout)
                self._scan()

    # -- public API ----------------------------------------------------------------------

    def put(self, tokens: Sequence[int], state: bytes, cuts: Sequence[int] = ()) -> None:
        """Cache `state` as the KV of `tokens`, computed with decode `cuts` besides the block
        multiples (RAM first; victims spill to disk)."""
        key = tuple(tokens)
        if not key or not state:
            return
        with self._lock:
            self._measured(len(key), len(state))
            self._expire_pins()
            for tier in (self._ram, self._pending, self._disk):
                if (cover := tier.cover(key)) is not None:  # redundant: keep the longer one
                    tier.lru.move_to_end(cover.tokens)
                    return
            # Entries this one extends become useless; by the invariant, at most one per tier.
            tiers = (self._ram, self._pending, self._disk)
            olds = [(t, t.index.longest_prefix(key)) for t in tiers]
            state = state if type(state) is bytes else bytes(state)  # no aliasing buffers
            entry = Entry(key, len(state) + 4 * len(key), state=state, cuts=tuple(cuts))
            to_ram = entry.nbytes <= self._ram.capacity
            if not to_ram and not self._can_spill(entry):
                return  # stored nowhere: keep what it would have replaced
            for tier, m in olds:
                if m is None or m[1].pins or tier.discard(m[1].tokens) is not m[1]:
                    continue
                if m[1].path is not None:
                    self._unlinks.append(m[1].path)
                    self._ensure_writer()
            if to_ram:
                self._ram.add(entry)
                while self._ram.nbytes > self._ram.capacity:
                    self._ram.evictions += 1
                    victim = self._ram.pop_lru(self._protected)
                    if victim is None:
                        break
                    self._spill(victim)
                self._spill_pinned_past_share()
            else:
                self._spill(entry)

    def lookup(self, tokens: Sequence[int], min_tokens: int = 1) -> CacheHit | None:
        """The entry sharing the longest common prefix with `tokens` (RAM wins ties).

        A hit needs at least `min_tokens` (>= 1) common tokens. Cost is O(len(tokens)).
        """
        key = tuple(tokens)
        need = max(1, min_tokens)
        with self._lock:
            self._lookups += 1
            best: tuple[int, Tier, TierIndex, Entry] | None = None
            tiers: list[tuple[Tier, TierIndex]] = [("ram", self._ram), ("ram", self._pending)]
            if self._files is not None:
                tiers.append(("disk", self._disk))
            for name, tier in tiers:
                m = tier.index.best_match(key)
                if m is not None and m[0] >= need and (best is None or m[0] > best[0]):
                    best = (m[0], name, tier, m[1])
            # Cascade counting, like CPU caches: a tier misses a lookup that reached it.
            for name, tier in ((n, t) for n, t in tiers if t is not self._pending):
                if best is not None and best[1] == name:
                    tier.hits += 1
                    break
                tier.misses += 1
            if best is None:
                self._misses += 1
                return None
            n, name, tier, entry = best
            tier.lru.move_to_end(entry.tokens)
            self._pins.refresh_within(key, n)
            self._pins_changed()
            if entry.path is None:
                loader = functools.partial(_identity, entry.state)
                return CacheHit(n, name, entry.tokens, loader, entry_cuts=entry.cuts)
            entry.pins += 1
            loader = functools.partial(self._load_disk, entry)
            release = functools.partial(self._unpin, entry)
            return CacheHit(n, name, entry.tokens, loader, release, entry_cuts=entry.cuts)

    def record_restore(self, n_tokens: int, tier: Tier) -> None:
        """Count tokens the engine restored from a hit in `tier` instead of recomputing."""
        with self._lock:
            (self._ram if tier == "ram" else self._disk).restored_tokens += n_tokens

    def flush_to_disk(self) -> None:
        """Queue every RAM entry for disk (on unload/shutdown); returns at once."""
        with self._lock:
            for e in list(self._ram.lru.values()):  # LRU first keeps recency order on disk
                if self._can_spill(e):
                    self._ram.discard(e.tokens)
                    self._spill(e)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until queued writes are done; False if some are still pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while (
                self._pending.lru or self._unlinks or self._writing
                or self._pins_unsaved() or self._saving_pins
            ):  # fmt: skip
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left if left is None else min(left, 0.5))
            return True

    def close(self, timeout: float | None = None) -> None:
        """Finish queued writes (up to `timeout`), then stop; log what could not be kept."""
        done = self.drain(timeout)
        with self._lock:
            self._closing = True
            self._changed.notify_all()
            if not done:
                lost = list(self._pending.lru.values())
                self._lost += len(lost)
                log.warning(
                    "prompt cache: %d entries (%d tokens) could not be written to disk",
                    len(lost), sum(len(e.tokens) for e in lost),
                )  # fmt: skip

    def clear(self) -> None:
        """Drop every entry in all tiers (deleting files); counters are kept."""
        with self._lock:
            for e in self._disk.lru.values():
                if e.path is not None:
                    self._unlinks.append(e.path)
            self._ram.clear()
            self._pending.clear()
            self._disk.clear()
            self._ensure_writer()

    def block_hashes(self, block: int) -> set[int]:
        """`RadixIndex.block_hashes` over both tiers: every block-aligned prefix a lookup
        here could restore. Read-only; safe to call from any thread."""
        with self._lock:  # the same tiers `lookup` searches
            found = self._ram.index.block_hashes(block)
            found |= self._pending.index.block_hashes(block)
            if self._files is not None:
                found |= self._disk.index.block_hashes(block)
            return found

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; safe to call from any thread."""
        with self._lock:
            ram = self._ram.stats()
            ram["pending_writes"] = len(self._pending.lru)
            return {
                "ram": ram,
                "disk": {**self._disk.stats(), "enabled": self._files is not None,
                         "writable": self._files is not None and not self._failures},
                "lookups": self._lookups, "misses": self._misses,
                "writes": self._writes, "write_bytes": self._write_bytes,
                "write_errors": self._write_errors, "load_errors": self._load_errors,
                "dropped_files": self._dropped_files, "lost_entries": self._lost,
                "no_room_drops": self._no_room,
                "pins": {"count": len(self._pins), "pinned_tokens": self._pins.pinned_tokens(),
                         "yielded": self._pins.yielded, "expired": self._pins.expired},
            }  # fmt: skip

    # -- the writer thread -----------------------------------------------------------------

    def _can_spill(self, e: Entry) -> bool:
        files = self._files
        if files is None:
            return False
        return files.size_of(len(e.tokens), e.nbytes, len(e.cuts)) <= self._disk.capacity

    def _spill(self, e: Entry) -> None:
        """Queue `e` for the writer (lock held). Drops the oldest queued entries past the
        pending bound (a disk that stays full must not hold RAM forever)."""
        if not self._can_spill(e):
            self._lost += 1
            return
        self._pending.add(e)
        while self._pending.nbytes > max(self._pending.capacity, e.nbytes):
            old = self._pending.pop_lru(self._protected)
            if old is None:
                break
            self._lost += 1
            log.warning("prompt cache: dropped %d tokens the disk could not take", len(old.tokens))
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        """Start the writer thread if it is not running (lock held)."""
        self._changed.notify_all()
        if not self._writer_running:
            self._writer_running = True
            threading.Thread(target=self._write_loop, name="kv-write", daemon=True).start()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._unlinks or self._pins_unsaved():
                        break
                    if self._closing or not self._pending.lru:
                        self._writer_running = False
                        self._changed.notify_all()
                        return
                    wait = self._retry_at - time.monotonic()
                    if wait <= 0:
                        break
                    self._changed.wait(wait)
                unlinks, self._unlinks = self._unlinks, []
                pins = self._pins.dump() if self._pins_unsaved() else None
                self._saving_pins = pins is not None
                entry = next(iter(self._pending.lru.values()), None) if not unlinks else None
                victims: list[Entry] = []
                if entry is not None:
                    need = self._files_size(entry)
                    bound = self._disk_bound()
                    if need <= bound:
                        victims = self._make_room(need, bound, not self._protected(entry))
                    if self._disk.nbytes + need > bound:  # the filesystem is at its reserve
                        self._drop_no_room(entry)
                        entry = None
                # `drain` must not return while files are still being deleted or written
                # outside the lock (a cleared cache would still show them).
                self._writing = bool(unlinks or victims or entry is not None)
            for path in unlinks:
                unlink_quietly(path)
            if pins is not None:
                assert self._files is not None
                self._write_pins(pins)
            for v in victims:
                unlink_quietly(v.path)
            if entry is not None:
                self._write_one(entry)  # clears `_writing`
            elif unlinks or victims:
                with self._lock:
                    self._writing = False
                    self._changed.notify_all()

    def _files_size(self, e: Entry) -> int:
        assert self._files is not None
        return self._files.size_of(len(e.tokens), len(e.state or b""), len(e.cuts))

    def _disk_bound(self) -> int:
        """The disk tier's bound now (lock held): its capacity, or less where the
        filesystem's free space past the reserve cannot hold more than the tier has (below
        what it has when others have taken the disk: the cache gives way)."""
        assert self._files is not None
        try:
            room = self._files.writable_bytes(self._reserve)
        except OSError:
            return self._disk.capacity  # cannot tell: the write itself will say
        return max(0, min(self._disk.capacity, self._disk.nbytes + room))

    def _drop_no_room(self, e: Entry) -> None:
        """Drop a queued entry the filesystem has no room for (lock held)."""
        self._pending.discard(e.tokens)
        self._lost += 1
        self._no_room += 1
        if self._no_room == 1 or self._no_room % 100 == 0:  # a full disk must not flood the log
            log.warning("prompt cache: %s is at its free-space reserve; %d entries not written",
                        self._files.dir if self._files else "?", self._no_room)  # fmt: skip
        self._changed.notify_all()

    def _make_room(self, need: int, bound: int | None = None, spare: bool = False) -> list[Entry]:
        """Evict disk entries until `need` more bytes fit `bound`, pinned ones last (never,
        if `spare`: an unpinned newcomer does not push a pinned prefix out)."""
        bound = self._disk.capacity if bound is None else bound
        victims = []
        while self._disk.lru and self._disk.nbytes + need > bound:
            victim = self._disk.pop_lru(self._protected, strict=spare)
            if victim is None:
                break
            self._disk.evictions += 1
            victims.append(victim)
        return victims

    def _write_one(self, e: Entry) -> None:
        assert self._files is not None and e.state is not None
        try:
            path, size = self._files.write(e.tokens, e.state, e.cuts)
        except OSError as exc:
            with self._lock:
                self._writing = False
                self._write_errors += 1
                self._failures += 1
                delay = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** min(self._failures - 1, 8))
                self._retry_at = time.monotonic() + delay
                self._changed.notify_all()
            log.warning("prompt cache: cannot write to %s (%s); retrying in %.1fs",
                        self._files.dir, exc, delay)  # fmt: skip
            return
        with self._lock:
            self._writing = False
            self._failures = 0
            self._retry_at = 0.0
            if self._pending.lru.get(e.tokens) is not e:  # replaced or cleared meanwhile
                self._unlinks.append(path)
            else:
                self._pending.discard(e.tokens)
                self._writes += 1
                self._write_bytes += size
                old = self._disk.discard(e.tokens)
                if old is not None and old.path != path:
                    self._unlinks.append(old.path)  # type: ignore[arg-type]
                self._disk.add(Entry(e.tokens, size, path=path, cuts=e.cuts))
            self._changed.notify_all()

    # -- disk tier -----------------------------------------------------------------------

    def _scan(self) -> None:
        """Rebuild the disk index from headers; delete what cannot be used."""
        files = self._files
        assert files is not None
        found: list[tuple[int, tuple[int, ...], int, Path, tuple[int, ...]]] = []
        try:
            paths = list(files.dir.iterdir())
        except OSError as exc:
            log.warning("prompt cache: cannot list %s: %s", files.dir, exc)
            return
        for p in paths:
            if p.name.endswith(".tmp"):  # a write interrupted by a crash
                unlink_quietly(p)
                continue
            if not p.name.endswith(SUFFIX):
                continue  # not ours: leave it alone
            try:
                tok_bytes, size, cuts = files.read_tokens(p)
                found.append((p.stat().st_mtime_ns, decode_tokens(tok_bytes), size, p, cuts))
            except (OSError, InvalidEntry) as exc:
                log.info("prompt cache: dropping %s: %s", p, exc)
                self._dropped_files += 1
                unlink_quietly(p)
        # Longest first, so a file another one covers (left by a crash) meets it and goes.
        kept: list[tuple[int, tuple[int, ...]]] = []
        for mtime, tokens, size, p, cuts in sorted(found, key=lambda t: -len(t[1])):
            if self._disk.cover(tokens) is not None:
                self._dropped_files += 1
                unlink_quietly(p)
            else:
                self._disk.add(Entry(tokens, size, path=p, cuts=cuts))
                kept.append((mtime, tokens))
        for _, tokens in sorted(kept):  # file mtimes carry the LRU order across restarts
            self._disk.lru.move_to_end(tokens)
        if (raw := read_pins_file(files.dir / PINS_FILE)) is not None:
            self._pins.load(raw)
        # The bound, or the filesystem's free space, may have shrunk since they were written.
        for victim in self._make_room(0, self._disk_bound()):
            unlink_quietly(victim.path)

    def _unpin(self, entry: Entry) -> None:
        with self._lock:
            entry.pins -= 1

    def _load_disk(self, entry: Entry) -> bytes:
        assert entry.path is not None and self._files is not None
        try:
            state = self._files.read_state(entry.path, entry.tokens)
            with contextlib.suppress(OSError):  # mtime is the LRU order after restart
                os.utime(entry.path)
            return state
        except (OSError, InvalidEntry) as exc:
            log.warning("prompt cache: dropping unusable entry %s: %s", entry.path, exc)
            with self._lock:
                self._load_errors += 1
                # Only if still indexed: a rewrite may have replaced the file meanwhile.
                if self._disk.lru.get(entry.tokens) is entry:
                    self._disk.discard(entry.tokens)
                    unlink_quietly(entry.path)
            raise CacheEntryCorrupt(f"{entry.path}: {exc}") from exc


def _identity(state: bytes) -> bytes:
    return state
