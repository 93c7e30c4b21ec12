"""`runner bench`: an HTTP benchmark for runner or any OpenAI-compatible server (llama-server).

Modules: `prompts` (deterministic filler text), `client` (async httpx streaming client,
`/metrics` and `/tokenize` helpers), `workloads` (cache, concurrency, chat), `spec` (speculative decoding), `server` (starts
a local `runner serve` when no `--url` is given), `report` (machine info, JSON, PNG, tables)
and `cli` (argparse wiring, also reachable as `python -m runner.bench`).
"""

from __future__ import annotations

WORKLOADS = ("cache", "concurrency", "chat", "spec")
