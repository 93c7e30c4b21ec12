"""Token log-probabilities in OpenAI's two shapes: chat's ``logprobs.content`` entries and
the legacy completions object (``tokens``, ``token_logprobs``, ``top_logprobs``,
``text_offset``). Token text comes from the vocabulary (reads are thread-safe)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from runner.engine import TokenLogprob

Piece = Callable[[int], bytes]


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", "replace")


def chat_entries(logprobs: Sequence[TokenLogprob], piece: Piece) -> list[dict[str, Any]]:
    """One ``{"token", "logprob", "bytes", "top_logprobs"}`` per drawn token."""
    out = []
    for lp in logprobs:
        raw = piece(lp.token)
        top = []
        for token, value in lp.top:
            alt = piece(token)
            top.append({"token": _text(alt), "logprob": value, "bytes": list(alt)})
        out.append(
            {"token": _text(raw), "logprob": lp.logprob, "bytes": list(raw), "top_logprobs": top}
        )
    return out


def completion_object(
    logprobs: Sequence[TokenLogprob], piece: Piece, offset: int = 0
) -> dict[str, Any]:
    """The legacy ``logprobs`` object; `offset` is where the first token's text starts."""
    tokens: list[str] = []
    offsets: list[int] = []
    for lp in logprobs:
        text = _text(piece(lp.token))
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{_text(piece(t)): v for t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }
