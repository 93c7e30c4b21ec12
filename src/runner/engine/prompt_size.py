"""Prompts that cannot fit are refused before they are tokenized.

Tokenizing is linear in the text but slow per byte (a 1.75 MB chat of 50,000 messages took
about a minute), and only its result says whether the prompt fits a slot. A bound on the
bytes says it sooner: every token reads at most as many bytes as its text holds, so a prompt
of more than ``ctx_per_slot * longest piece`` bytes has more tokens than a slot holds,
whatever the text is. The longest piece is found once per model, when it loads.

That holds where tokens' texts, joined, give back the text they were read from: SentencePiece
and byte-level BPE vocabularies (byte fallback included). Vocabularies that normalize text
first (WordPiece, Unigram) may drop characters, so they get no bound and are tokenized.
"""

from __future__ import annotations

import llama_cpp

from .model import LlamaModel

_EXACT_VOCABS = frozenset({llama_cpp.LLAMA_VOCAB_TYPE_SPM, llama_cpp.LLAMA_VOCAB_TYPE_BPE})


def longest_piece(model: LlamaModel) -> int | None:
    """Bytes of the vocabulary's longest token text (special tokens' included: prompts parse
    them), or None for a vocabulary whose tokens may read more text than they hold.

    Read from the tokens' stored texts, which are never shorter than the text a token reads
    (SentencePiece writes a space as 3-byte "▁", byte-level BPE a byte as 1-2 bytes, byte
    tokens as "<0x0A>"), and three times faster to list than the pieces themselves.
    """
    if llama_cpp.llama_vocab_type(model.vocab) not in _EXACT_VOCABS:
        return None
    get_text = llama_cpp.llama_vocab_get_text
    vocab = model.vocab
    return max(1, *(len(get_text(vocab, token) or b"") for token in range(model.n_vocab)))


def prompt_byte_bound(model: LlamaModel, ctx_per_slot: int) -> int | None:
    """Bytes above which a prompt certainly does not fit a slot of `ctx_per_slot` tokens
    (None: no such bound for this vocabulary)."""
    longest = longest_piece(model)
    return None if longest is None else ctx_per_slot * longest
