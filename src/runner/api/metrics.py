"""`GET /metrics`: Prometheus text from every resident engine's counters.

Names follow llama-server (`llamacpp:` prefix) so existing dashboards work; each series is
labelled with `model` since runner serves several models at once. runner's own series use
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
    ("runner:requests", "Requests accepted by the engine.", "requests_total"),
    ("runner:requests_rejected", "Requests refused because the queue was full.", "rejected_total"),
)


class EngineCollector(Collector):
    """Reads `loader.resident()` engines at scrape time."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def collect(self) -> Iterator[Metric]:
        engines = [(m.name, m.engine) for m in self.loader.resident() if m.engine is not None]
        labels = ["model"]

        def family(kind: Callable[..., Any], name: str, doc: str) -> Any:
            return kind(name, doc, labels=labels)

        for name, doc, attr in _COUNTERS:
            counter = family(CounterMetricFamily, name, doc)
            for model, engine in engines:
                counter.add_metric([model], getattr(engine.stats, attr))
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
                lambda e: e.scheduler.processing,
            ),
            "llamacpp:requests_deferred": (
                "Requests waiting for a slot.",
                lambda e: e.scheduler.queued,
            ),
            "runner:slots_busy": ("Slots serving a request.", lambda e: e.scheduler.processing),
            "runner:slots_total": ("Slots of the model.", lambda e: e.config.slots),
        }
        for name, (doc, read) in gauges.items():
            gauge = family(GaugeMetricFamily, name, doc)
            for model, engine in engines:
                gauge.add_metric([model], read(engine))
            yield gauge

        finished = CounterMetricFamily(
            "runner:requests_finished", "Requests ended, by reason.", labels=["model", "reason"]
        )
        for model, engine in engines:
            for reason, count in sorted(dict(engine.stats.finished).items()):
                finished.add_metric([model, reason], count)
        yield finished

        yield GaugeMetricFamily("runner:models_loaded", "Models resident.", value=len(engines))

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed set up front: series depend on which models are resident


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def make_registry(loader: Loader) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(loader))
    return registry
