"""A draft model for speculative decoding: a small GGUF with the target's vocabulary that
guesses a slot's next tokens, greedily, on the engine thread (the target verifies them in its
step's one decode, `LlamaExecutor.execute`).

Its context holds one sequence per slot and follows the slot lazily: before each proposal
the sequence is cut back to what it shares with the slot's tokens and the rest is decoded.
What a proposal returns must depend on the slot's tokens alone, never on what the draft
computed before (else a cached request would get other guesses, other verify shapes and so,
on some CPUs, another answer). So the shared part is kept only in whole blocks that were
decoded as one call of `block` rows at the same positions, and the rest, the partial block
at the end and the guesses of the last proposal, is decoded again in one call.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import llama_cpp
import numpy as np

from .context import Batch, LlamaContext
from .model import LlamaModel, ModelLoadError
from .plan import DecodeFailed
from .types import EngineConfig

log = logging.getLogger(__name__)

# A guess whose probability under the draft is below this ends the proposal: the draft
# expects to be wrong there, and every later guess would be verified for nothing.
P_MIN = 0.6
CHECKED_TOKENS = 512  # token texts compared between draft and target vocabularies


def check_vocabulary(draft: LlamaModel, target: LlamaModel) -> None:
    """Raise ModelLoadError unless `draft` tokenizes like `target` (a guess is a token id)."""
    problem = None
    if draft.n_vocab != target.n_vocab:
        problem = f"{draft.n_vocab} tokens against {target.n_vocab}"
    elif (draft.bos, draft.eos) != (target.bos, target.eos):
        problem = "other BOS/EOS tokens"
    else:
        step = max(1, draft.n_vocab // CHECKED_TOKENS)
        for token in range(0, draft.n_vocab, step):
            if draft.piece(token, True) != target.piece(token, True):
                problem = f"token {token} differs"
                break
    if problem:
        raise ModelLoadError(
            f"draft model {draft.path.name} does not share {target.path.name}'s vocabulary "
            f"({problem})"
        )


def _shared(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens `a` and `b` share, up to `limit`."""
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class DraftModel:
    """The draft's weights and context; engine thread only once the engine runs."""

    def __init__(self, path: str | os.PathLike[str], target: LlamaModel, config: EngineConfig):
        self.block = config.prefill_block
        self.model = LlamaModel(path, config.gpu_layers)
        try:
            check_vocabulary(self.model, target)
            # Room for the partial block, the last token and the guesses in one call.
            n_batch = max(self.block + config.spec_draft_max + 1, 64)
            self.ctx = LlamaContext(
                self.model,
                n_ctx=config.n_ctx,
                n_seq_max=config.slots,
                n_batch=n_batch,
                n_ubatch=n_batch,
                threads=config.threads,
                kv_unified=False,
                swa_full=True,
            )
        except Exception:
            self.model.close()
            raise
        self.batch = Batch(n_batch)
        self._held: dict[int, list[int]] = {}  # per sequence: tokens whose KV is kept
        self._row_seconds: tuple[float, float] | None = None  # (tail call, one guess)

    @property
    def name(self) -> str:
        return self.model.path.name

    # -- proposals ------------------------------------------------------------------------

    def propose(self, seq: int, tokens: Sequence[int], k: int) -> list[int]:
        """Up to `k` greedy guesses to follow `tokens` (fewer where the draft is unsure)."""
        if k <= 0 or not tokens:
            return []
        n = len(tokens)
        held = self._held.setdefault(seq, [])
        limit = min(len(held), n - 1)
        # Step after step the slot's tokens extend what the draft holds: one comparison in C
        # instead of a Python loop over the whole context.
        common = limit if held[:limit] == tokens[:limit] else _shared(held, tokens, limit)
        keep = common // self.block * self.block
        if self.ctx.truncate(seq, keep) != keep:
            keep = 0
        del held[keep:]
        # Whole blocks not held yet, one call each; then the partial block with the last
        # token (whose logits give the first guess).
        whole = (n - 1) // self.block * self.block
        for a in range(keep, whole, self.block):
            self._decode(tokens[a : a + self.block], a, seq, logits=False)
            held.extend(tokens[a : a + self.block])
        self._decode(tokens[whole:], whole, seq, logits=True)
        guesses: list[int] = []
        pos = n
        while True:
            token, p = self._greedy()
            if p < P_MIN:
                break
            guesses.append(token)
            if len(guesses) == k or self.model.is_eog(token):
                break
            self._decode([token], pos, seq, logits=True)
            pos += 1
        return guesses

    def _decode(self, tokens: Sequence[int], start: int, seq: int, logits: bool) -> None:
        batch = self.batch
        batch.clear()
        batch.add(list(tokens), start, seq, logits)
        batch.struct.n_tokens = batch.n
        if self.ctx.decode(batch.struct) != 0:
            self.ctx.clear_seq(seq)
            self._held.pop(seq, None)
            raise DecodeFailed("the draft model's decode failed")

    def _greedy(self) -> tuple[int, float]:
        """The draft's most likely next token (lowest id on ties) and its probability."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx.handle, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))
        token = int(np.argmax(logits))
        peak = logits[token]
        p = 1.0 / float(np.exp(logits - peak, dtype=np.float64).sum())
        return token, p

    # -- cost --------------------------------------------------------------------------------

    def calibrate(self) -> None:
        """Time a proposal's calls once, at load (sequence 0 is still empty)."""
        token = self.model.bos if self.model.bos >= 0 else 0
        try:
            tail = guess = float("inf")
            for _ in range(2):
                self.ctx.clear_seq(0)
                started = time.perf_counter()
                self._decode([token] * self.block, 0, 0, logits=True)
                mid = time.perf_counter()
                self._decode([token], self.block, 0, logits=True)
                tail = min(tail, mid - started)
                guess = min(guess, time.perf_counter() - mid)
            self._row_seconds = (tail, guess)
        finally:
            self.ctx.clear_seq(0)
            self._held.pop(0, None)

    def seconds(self, k: int) -> float:
        """Expected seconds to propose `k` guesses (0 before calibration)."""
        if self._row_seconds is None or k <= 0:
            return 0.0
        tail, guess = self._row_seconds
        return tail + guess * (k - 1)

    def close(self) -> None:
        self.ctx.close()
        self.model.close()
