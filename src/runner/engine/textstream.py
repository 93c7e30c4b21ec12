"""Turns a stream of token bytes into text that is safe to show: whole UTF-8 characters,
and never any part of a stop string."""

from __future__ import annotations

import codecs


class TextStream:
    """Accumulates token pieces; `push` returns the text that became final.

    A character split across tokens is held back until complete. Text that could be the
    start of a stop string is held back until it is known not to be one; when a stop string
    appears, everything before it is released and `stopped` becomes true.
    """

    def __init__(self, stop: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in (stop or []) if s]
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False
        self.stop_word: str | None = None

    def push(self, piece: bytes) -> str:
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        return self._release()

    def flush(self) -> str:
        """End of generation: release what was held back (an incomplete stop string is text)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        out, self._pending = self._pending, ""
        return out

    def _release(self) -> str:
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        # A stop string may straddle released text and pending text only if it began in the
        # held-back tail, so searching `pending` alone is enough.
        hit = self._earliest_stop(self._pending)
        if hit is not None:
            index, word = hit
            out = self._pending[:index]
            self._pending = ""
            self.stopped = True
            self.stop_word = word
            return out
        keep = self._partial_stop_suffix(self._pending)
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def _earliest_stop(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for word in self._stops:
            index = text.find(word)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, word)
        return best

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for length in range(min(len(text), self._longest_stop - 1), 0, -1):
            tail = text[-length:]
            if any(word.startswith(tail) for word in self._stops):
                return length
        return 0
