"""Snapshots of a recurrent state along a sequence, so it can go back to an earlier prefix.

A recurrent state (Mamba, RWKV, the convolution/SSM layers of hybrid models) is one value per
sequence, overwritten by every token: llama.cpp cannot cut it back to an earlier position
the way it drops attention KV cells. llama-server answers this with context checkpoints, and
so do we: after a prompt piece that ends on a block boundary (a cut every run of a prompt
makes, engine/partition.py) the sequence's recurrent part is copied out (for a hybrid model
only that part: its attention KV can still be trimmed). Going back to `keep` tokens restores
the newest snapshot at or below `keep` and trims the attention KV to match; the prefix up to
there was computed by the same decode calls an uncached run makes, so answers do not change.

Snapshots are valid while the sequence only grows: any cut below one, a clear or a state
written over the sequence drops them. At most `limit` are kept per sequence, thinned evenly,
never the newest (the end of the last prompt: where the next turn of a conversation resumes).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Checkpoints:
    """Per sequence, (position, state bytes) in ascending position."""

    limit: int = 8
    _by_seq: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)

    def add(self, seq: int, pos: int, state: bytes) -> None:
        snaps = self._by_seq.setdefault(seq, [])
        snaps[:] = [s for s in snaps if s[0] < pos]
        snaps.append((pos, state))
        while len(snaps) > self.limit:
            # Drop the inner snapshot whose neighbours are closest: spacing stays even. With
            # room for one or two, the oldest goes.
            inner = range(1, len(snaps) - 1)
            gap = (lambda j: snaps[j + 1][0] - snaps[j - 1][0]) if inner else None
            del snaps[min(inner, key=gap) if gap else 0]

    def best(self, seq: int, at_most: int) -> tuple[int, bytes] | None:
        """The newest snapshot at or below position `at_most`."""
        for pos, state in reversed(self._by_seq.get(seq, ())):
            if pos <= at_most:
                return pos, state
        return None

    def keep_up_to(self, seq: int, pos: int) -> None:
        """The sequence was cut back to `pos` tokens: later snapshots no longer apply."""
        snaps = self._by_seq.get(seq)
        if snaps:
            snaps[:] = [s for s in snaps if s[0] <= pos]

    def drop(self, seq: int | None = None) -> None:
        if seq is None:
            self._by_seq.clear()
        else:
            self._by_seq.pop(seq, None)

    def copy(self, src: int, dst: int) -> None:
        """`dst` now holds what `src` holds (its state was copied): so do the snapshots."""
        self._by_seq[dst] = list(self._by_seq.get(src, ()))

    def positions(self, seq: int) -> list[int]:
        return [pos for pos, _ in self._by_seq.get(seq, ())]

    def nbytes(self) -> int:
        return sum(len(s) for snaps in self._by_seq.values() for _, s in snaps)
