"""How many ubatches (full passes over the weights) llama.cpp makes of one planned batch.

`llama_decode` cuts a batch into ubatches before computing (`llama-batch.cpp`, chosen by the
KV cache's `init_batch`):

- one unified KV buffer (`kv_unified = true`): `split_simple`, the next `n_ubatch` tokens in
  batch order, whatever their sequences;
- a KV stream per sequence (`kv_unified = false`, llama-server's default and runner's):
  `split_equal(n_ubatch, sequential=true)`, which takes the same number of tokens from each
  of a run of sequences with consecutive ids (in the order their first unused token appears
  in the batch), as many as the shortest of them has left, within `n_ubatch`.

So with per-slot streams a 16-token prompt piece beside 1-token decodes, a 4-guess verify
beside plain decodes, or busy slots {0, 2, 3} each cost another weight pass. This module
replays those rules on the entries the scheduler planned (pure Python, no llama.cpp), so the
engine can count what a step really cost and tests can check what a schedule makes.
Replayed from llama.cpp as pinned in llama-cpp-python 0.3.36; check again on an upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence


def count_ubatches(entries: Sequence[tuple[int, int]], n_ubatch: int, unified: bool = False) -> int:
    """Ubatches llama.cpp makes of a batch holding, in order, `n` tokens of sequence `seq` for
    each `(seq, n)`, each sequence in one entry (as runner's batches are)."""
    return len(ubatch_rows(entries, n_ubatch, unified))


def ubatch_rows(
    entries: Sequence[tuple[int, int]], n_ubatch: int, unified: bool = False
) -> list[int]:
    """The tokens in each ubatch of such a batch. Runs every step, so it works on entries,
    not tokens; `split` is the token-by-token replay it is tested against."""
    total = sum(n for _, n in entries)
    if unified:
        return [min(n_ubatch, total - start) for start in range(0, total, n_ubatch)]
    seqs = [seq for seq, _ in entries]
    left = [n for _, n in entries]
    out: list[int] = []
    first = 0
    while True:
        while first < len(left) and left[first] == 0:
            first += 1
        if first == len(left):
            return out
        # Within an entry a sequence's unused tokens are its last ones, so scanning tokens
        # forward for the next id is scanning the later entries.
        chosen = [first]
        for k in range(first + 1, len(left)):
            if left[k] and seqs[k] == seqs[chosen[-1]] + 1:
                chosen.append(k)
                if len(chosen) > n_ubatch:
                    break
        each = min(min(left[k] for k in chosen), max(1, n_ubatch // len(chosen)))
        for k in chosen:
            left[k] -= each
        out.append(each * len(chosen))


def split(seqs: Sequence[int], n_ubatch: int, unified: bool = False) -> list[list[int]]:
    """The ubatches, as lists of batch indices, of a batch whose token i is in `seqs[i]`."""
    if n_ubatch <= 0:
        raise ValueError("n_ubatch must be positive")
    used = [False] * len(seqs)
    out: list[list[int]] = []
    step = _split_simple if unified else _split_equal
    while True:
        ubatch = step(seqs, used, n_ubatch)
        if not ubatch:
            return out
        out.append(ubatch)


def _split_simple(seqs: Sequence[int], used: list[bool], n_ubatch: int) -> list[int]:
    start = next((i for i, u in enumerate(used) if not u), len(used))
    idxs = list(range(start, min(start + n_ubatch, len(seqs))))
    for i in idxs:
        used[i] = True
    return idxs


def _split_equal(seqs: Sequence[int], used: list[bool], n_ubatch: int) -> list[int]:
    # The run of sequences in this ubatch: the first unused token's, then each token whose
    # sequence id is one more than the last one taken (llama.cpp's `sequential`).
    chosen: list[int] = []
    for i, seq in enumerate(seqs):
        if used[i] or seq in chosen:
            continue
        if chosen and seq != chosen[-1] + 1:
            continue
        chosen.append(seq)
        if len(chosen) > n_ubatch:
            break
    if not chosen:
        return []
    remaining = {seq: [i for i, s in enumerate(seqs) if s == seq and not used[i]] for seq in chosen}
    per_seq: list[list[int]] = [[] for _ in chosen]
    while all(remaining[seq] for seq in chosen):
        for k, seq in enumerate(chosen):
            idx = remaining[seq].pop(0)
            per_seq[k].append(idx)
            used[idx] = True
        if (len(per_seq[0]) + 1) * len(chosen) > n_ubatch:
            break
    return [i for idxs in per_seq for i in idxs]
