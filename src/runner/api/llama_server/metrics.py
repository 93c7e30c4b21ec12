"""`GET /metrics`: Prometheus text from every resident engine's counters.

Names follow llama-server (`llamacpp:` prefix) so existing dashboards work; each series is
labelled with `model` since runner serves several models at once, and with `engine` and
`ctx_size`, since one model can be loaded more than once (Ollama's `num_ctx` asks for another
context size): `engine` is the file's short id and KV layout, unique among the residents, so
no two series share a label set. runner's own series use
the `runner:` prefix. Counters restart from zero when a model is reloaded (Prometheus treats
that as a counter reset). A custom Collector reads the stats at scrape time, registered in a
per-app registry so several apps (tests) in one process never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runner.loader import Loader
from runner.resident import ResidentModel

# (name without _total, help, EngineStats attribute)
_COUNTERS = (
    (
        "llamacpp:prompt_tokens",
        "Prompt tokens computed (not reused from cache).",
        "prompt_tokens_total",
    ),
    ("llamacpp:prompt_seconds", "Prompt processing time.", "prompt_seconds_total"),
    ("llamacpp:tokens_predicted", "Generated tokens.", "tokens_predicted_total"),
    ("llamacpp:tokens_predicted_seconds", "Generation time.", "predicted_seconds_total"),
    ("llamacpp:prompt_tokens_cached", "Prompt tokens reused from a cache.", "cache_tokens_total"),
    ("llamacpp:n_decode", "llama_decode calls.", "n_decode_total"),
    ("runner:decode_seconds", "Time spent in llama_decode.", "decode_seconds_total"),
    ("runner:sample_seconds", "Time in llama.cpp's samplers.", "sample_seconds_total"),
    (
        "runner:step_seconds",
        "Wall time of engine steps: schedule, decode, sample, update and emit together.",
        "step_seconds_total",
    ),
    (
        "runner:schedule_seconds",
        "Time planning steps (admission, pieces, guesses).",
        "schedule_seconds_total",
    ),
    (
        "runner:update_seconds",
        "Time turning sampled tokens into output (text, stops, finishes).",
        "update_seconds_total",
    ),
    ("runner:emit_seconds", "Time handing events to the API.", "emit_seconds_total"),
    ("runner:steps", "Engine steps that decoded tokens.", "steps_total"),
    (
        "runner:ubatches",
        "Passes over the weights those steps made (llama.cpp's ubatches, replayed).",
        "ubatches_total",
    ),
    (
        "runner:draft_tokens",
        "Speculative tokens verified (prompt lookup).",
        "draft_tokens_total",
    ),
    ("runner:draft_tokens_accepted", "Speculative tokens kept.", "draft_accepted_total"),
    ("runner:requests", "Requests accepted by the engine.", "requests_total"),
    ("runner:requests_rejected", "Requests refused because the queue was full.", "rejected_total"),
)


class EngineCollector(Collector):
    """Reads `loader.resident()` engines at scrape time."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def collect(self) -> Iterator[Metric]:
        engines = engine_labels(self.loader.resident())
        labels = list(ENGINE_LABELS)

        def family(kind: Callable[..., Any], name: str, doc: str) -> Any:
            return kind(name, doc, labels=labels)

        for name, doc, attr in _COUNTERS:
            counter = family(CounterMetricFamily, name, doc)
            for model, engine in engines:
                counter.add_metric(list(model), getattr(engine.stats, attr))
            yield counter

        gauges: dict[str, tuple[str, Callable[[Any], float]]] = {
            "llamacpp:prompt_tokens_seconds": (
                "Average prompt throughput in tokens/s.",
                lambda e: _rate(e.stats.prompt_tokens_total, e.stats.prompt_seconds_total),
            ),
            "llamacpp:predicted_tokens_seconds": (
                "Average generation throughput in tokens/s.",
                lambda e: _rate(e.stats.tokens_predicted_total, e.stats.predicted_seconds_total),
            ),
            "llamacpp:requests_processing": (
                "Requests in a slot.",
                lambda e: e.processing,
            ),
            "llamacpp:requests_deferred": (
                "Requests waiting for a slot.",
                lambda e: e.queued,
            ),
            "runner:slots_busy": ("Slots serving a request.", lambda e: e.processing),
            "runner:slots_total": ("Slots of the model.", lambda e: e.config.slots),
        }
        for name, (doc, read) in gauges.items():
            gauge = family(GaugeMetricFamily, name, doc)
            for model, engine in engines:
                gauge.add_metric(list(model), read(engine))
            yield gauge

        finished = CounterMetricFamily(
            "runner:requests_finished", "Requests ended, by reason.", labels=[*labels, "reason"]
        )
        for model, engine in engines:
            for reason, count in sorted(dict(engine.stats.finished).items()):
                finished.add_metric([*model, reason], count)
        yield finished

        yield from _prompt_cache_metrics(engines)
        yield GaugeMetricFamily("runner:models_loaded", "Models resident.", value=len(engines))

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed set up front: series depend on which models are resident


ENGINE_LABELS = ("model", "engine", "ctx_size")
Labels = tuple[str, str, str]


def engine_labels(residents: Iterable[ResidentModel]) -> list[tuple[Labels, Any]]:
    """(label values, engine) for each loaded resident; `engine` is unique among them (a
    `#2` suffix in the unlikely case that two loads share a file and a KV layout)."""
    out: list[tuple[Labels, Any]] = []
    taken: set[str] = set()
    for model in residents:
        if model.engine is None:
            continue
        engine_id = base = f"{model.entry.id[:12]}-{model.config.kv_key()}"
        n = 1
        while engine_id in taken:
            n += 1
            engine_id = f"{base}#{n}"
        taken.add(engine_id)
        out.append(((model.name, engine_id, str(model.config.ctx_per_slot)), model.engine))
    return out


# (name, help, key in a tier's stats, counter?) for the RAM and disk prompt-cache tiers
_TIER_SERIES = (
    ("runner:prompt_cache_hits", "Prompt-cache lookups served by this tier.", "hits", True),
    (
        "runner:prompt_cache_restored_tokens",
        "Tokens restored from this tier.",
        "restored_tokens",
        True,
    ),
    ("runner:prompt_cache_evictions", "Entries evicted from this tier.", "evictions", True),
    ("runner:prompt_cache_entries", "Entries held by this tier.", "entries", False),
    ("runner:prompt_cache_bytes", "Bytes held by this tier.", "bytes", False),
    ("runner:prompt_cache_capacity_bytes", "Capacity of this tier.", "capacity_bytes", False),
)
_CACHE_COUNTERS = (
    ("runner:prompt_cache_lookups", "Prompt-cache lookups.", "lookups"),
    ("runner:prompt_cache_misses", "Prompt-cache lookups that found nothing.", "misses"),
    ("runner:prompt_cache_writes", "Prompt states saved to the cache.", "writes"),
    ("runner:prompt_cache_write_errors", "Failed prompt-cache disk writes.", "write_errors"),
)


def _prompt_cache_metrics(engines: list[tuple[Labels, Any]]) -> Iterator[Metric]:
    """The RAM/disk prompt-cache tiers of each engine that has one (labels: the engine's,
    and tier)."""
    stats = []
    for model, engine in engines:
        cache = getattr(engine, "prompt_cache", None)
        if cache is not None:
            stats.append((model, cache.stats()))
    if not stats:
        return
    for name, doc, key, is_counter in _TIER_SERIES:
        kind = CounterMetricFamily if is_counter else GaugeMetricFamily
        family = kind(name, doc, labels=[*ENGINE_LABELS, "tier"])
        for model, st in stats:
            for tier in ("ram", "disk"):
                if key in st.get(tier, {}):
                    family.add_metric([*model, tier], st[tier][key])
        yield family
    for name, doc, key in _CACHE_COUNTERS:
        counter = CounterMetricFamily(name, doc, labels=list(ENGINE_LABELS))
        for model, st in stats:
            if key in st:
                counter.add_metric(list(model), st[key])
        yield counter


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def make_registry(loader: Loader) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(loader))
    return registry
