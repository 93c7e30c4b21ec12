"""What one stored-Responses write and read cost as the store grows.

    python scripts/bench_responses_store.py [--sizes 10,10000,1000000] [--ops 200]

For each size, a fresh store under a temp dir is filled to that many records (rows written
in bulk, as a store that has been in use for months would hold them), then `--ops` writes
(`put`, what `store: true` costs a request) and as many reads (`get`, what
`previous_response_id` and `GET /v1/responses/{id}` cost) of a typical record are timed.
Prints the median and p95 in milliseconds per size: with an index they stay flat.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

from runner.api.responses.store import DB_NAME, ResponseStore

RECORD = {
    "response": {
        "id": "resp_x",
        "object": "response",
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "content": []}],
        "metadata": {},
    },
    "input_items": [{"type": "message", "id": "msg_0", "role": "user", "content": "Hi " * 20}],
    "messages": [
        {"role": "user", "content": "Hi " * 20},
        {"role": "assistant", "content": "Hello there " * 10},
    ],
}


def fill(directory: Path, count: int) -> None:
    """`count` records straight into the database, in large transactions."""
    body = json.dumps(RECORD).encode()
    now = time.time()
    with closing(sqlite3.connect(directory / DB_NAME)) as conn, conn:
        conn.executemany(
            "INSERT INTO responses (id, written, size, body) VALUES (?, ?, ?, ?)",
            ((f"resp_fill{i}", now - count + i, len(body), body) for i in range(count)),
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench(count: int, ops: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        # Bound far above what is written, so that no write has to evict.
        ResponseStore(directory, max_bytes=1 << 40, max_age=-1).close()
        fill(directory, count)
        store = ResponseStore(directory, max_bytes=1 << 40, max_age=30 * 86400)
        ids = [f"resp_{secrets.token_urlsafe(12)}" for _ in range(ops)]
        writes, reads = [], []
        for response_id in ids:
            started = time.perf_counter()
            store.put(response_id, RECORD)
            writes.append(time.perf_counter() - started)
        for response_id in ids:
            started = time.perf_counter()
            assert store.get(response_id) is not None
            reads.append(time.perf_counter() - started)
        store.close()
    return {
        "put_p50_ms": 1e3 * statistics.median(writes),
        "put_p95_ms": 1e3 * percentile(writes, 0.95),
        "get_p50_ms": 1e3 * statistics.median(reads),
        "get_p95_ms": 1e3 * percentile(reads, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000,1000000")
    parser.add_argument("--ops", type=int, default=200)
    args = parser.parse_args()
    print(f"{'records':>10} {'put p50':>9} {'put p95':>9} {'get p50':>9} {'get p95':>9}  (ms)")
    for size in (int(s) for s in args.sizes.split(",")):
        r = bench(size, args.ops)
        print(
            f"{size:>10} {r['put_p50_ms']:>9.3f} {r['put_p95_ms']:>9.3f} "
            f"{r['get_p50_ms']:>9.3f} {r['get_p95_ms']:>9.3f}"
        )


if __name__ == "__main__":
    main()
