"""The `spec` workload: decode speed where speculation should pay, and where it should not.

- copy: a prompt holding a 25-function Python module, asked to repeat it (the shape of code
  edits, refactors and answers that quote their sources); greedy, 200 tokens.
- chat: short questions with nothing to copy, where drafting should back off; greedy.

Each request's decode rate is the server's own `timings.predicted_per_second` (llama-server
and runner both report it; the client's stream rate is kept too), with `draft_n` and
`draft_n_accepted` when the server reports them. The copy outputs' hash is recorded, so two
servers (or runner with and without speculation) can be checked to have answered alike.
"""

from __future__ import annotations

import hashlib
import statistics
from typing import Any

from . import prompts
from .client import BenchClient, BenchError, Result

COPY_TOKENS = 200
CHAT_TOKENS = 64


_NAMES = (
    "load config",
    "save report",
    "parse header",
    "render table",
    "merge records",
    "split words",
    "count lines",
    "find owner",
    "check limits",
    "format price",
    "read sensor",
    "write backup",
    "scan folder",
    "build index",
    "clean text",
    "sort orders",
    "group events",
    "rank players",
    "fetch weather",
    "send invoice",
    "track parcel",
    "resize image",
    "encode message",
    "match pattern",
    "close account",
)
_FIELDS = (
    "name",
    "size",
    "owner",
    "price",
    "color",
    "label",
    "status",
    "weight",
    "region",
    "title",
)


def module_source(n_functions: int = 25) -> str:
    """A deterministic Python module of small functions that differ in words, not numbers
    (a small model copies words faithfully but tends to "continue" number sequences)."""
    parts = []
    for i in range(n_functions):
        words = _NAMES[i % len(_NAMES)]
        name = words.replace(" ", "_")
        field_ = _FIELDS[i % len(_FIELDS)]
        other = _FIELDS[(i * 3 + 1) % len(_FIELDS)]
        parts.append(
            f"def {name}(items, default=None):\n"
            f'    """{words.capitalize()} for every item that has a {field_}."""\n'
            f"    chosen = [item for item in items if item.{field_}]\n"
            f"    if not chosen:\n"
            f"        return default\n"
            f"    return sorted(chosen, key=lambda item: item.{other})\n"
        )
    return "\n".join(parts)


def copy_messages() -> list[dict[str, str]]:
    text = (
        "Here is a Python module:\n\n```python\n"
        + module_source()
        + "\n```\n\nRepeat the module exactly, from the first line to the last."
    )
    return [{"role": "user", "content": text}]


def _median(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def _figures(result: Result) -> dict[str, Any]:
    t = result.timings
    return {
        **result.figures(),
        "draft_n": t.get("draft_n"),
        "draft_n_accepted": t.get("draft_n_accepted"),
        "text_sha256": hashlib.sha256(result.text.encode()).hexdigest()[:16],
    }


async def run_spec(client: BenchClient, plan: Any, tick: Any) -> dict[str, Any]:
    """`repeats` copy requests, then `repeats` rounds of chat questions, one at a time."""
    if plan.warmup:
        warm = await client.chat([{"role": "user", "content": "Hello"}], 2)
        if not warm.ok:
            raise BenchError(f"warm-up request failed: {warm.error}")
    copy_tokens = plan.max_tokens or COPY_TOKENS
    copies = []
    for _ in range(plan.repeats):
        # cache_prompt off: every repeat decodes the same way, so only generation differs.
        result = await client.chat(copy_messages(), copy_tokens, cache_prompt=False)
        if not result.ok:
            raise BenchError(f"copy request failed: {result.error}")
        copies.append(_figures(result))
        tick(1)
    chats = []
    for r in range(plan.repeats):
        question = prompts.question(r)
        result = await client.chat([{"role": "user", "content": question}], CHAT_TOKENS)
        if not result.ok:
            raise BenchError(f"chat request failed: {result.error}")
        chats.append(_figures(result))
        tick(1)

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        return _median([row[key] for row in rows])

    summary = {
        "copy_decode_tps": med(copies, "predicted_per_second"),
        "copy_stream_tps": med(copies, "stream_tps"),
        "copy_draft_n": med(copies, "draft_n"),
        "copy_draft_accepted": med(copies, "draft_n_accepted"),
        "copy_output_tokens": med(copies, "output_tokens"),
        "chat_decode_tps": med(chats, "predicted_per_second"),
        "chat_stream_tps": med(chats, "stream_tps"),
        "chat_draft_n": med(chats, "draft_n"),
        "chat_draft_accepted": med(chats, "draft_n_accepted"),
    }
    hashes = sorted({c["text_sha256"] for c in copies})
    return {"summary": summary, "copy": copies, "chat": chats, "copy_outputs": hashes}


def table_rows(run: dict[str, Any]) -> list[list[str]]:
    s = run["summary"]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    rows = [["workload", "decode tok/s", "stream tok/s", "drafted", "accepted"]]
    for kind in ("copy", "chat"):
        rows.append(
            [
                kind,
                fmt(s[f"{kind}_decode_tps"]),
                fmt(s[f"{kind}_stream_tps"]),
                fmt(s[f"{kind}_draft_n"]),
                fmt(s[f"{kind}_draft_accepted"]),
            ]
        )
    return rows
