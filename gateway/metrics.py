"""Prometheus metrics for ``GET /metrics``.

Components keep plain integer counters (cheap on the hot path, no locks); a custom collector
reads them at scrape time, latencies included (:class:`LatencyHistogram`: prometheus-client's
histograms take a lock per bucket and per sum on every observation, which a single-threaded
event loop does not need). Each gateway has its own registry, so several can run in one
process (tests). Nothing here ever carries a token: labels are reasons, codes and
transports only.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(slots=True)
class EngineCounters:
    """Plain counters written by the sync engine."""

    pushes_accepted: int = 0
    events_accepted: int = 0
    pushes_rejected: Counter[str] = field(default_factory=Counter)
    # Pulls refused by the on_pull hook (gateway.pushgate), by reason.
    pulls_rejected: Counter[str] = field(default_factory=Counter)
    stores_unloaded: int = 0
    frames_delivered: int = 0


@dataclass(slots=True)
class SessionCounters:
    """Plain counters written by the transports' session bookkeeping and the peers."""

    connections: Counter[str] = field(default_factory=Counter)
    connections_total: Counter[str] = field(default_factory=Counter)
    evictions: int = 0
    # Requests ended by an unexpected exception (answered 1011 / 500), by transport.
    requests_failed: Counter[str] = field(default_factory=Counter)
    # Sync handshakes answered 503 OVERLOADED (limits.max_pending_handshakes).
    handshakes_shed: int = 0


class LatencyHistogram:
    """A Prometheus histogram observed from the event loop's thread only (no locks).

    ``observe`` is a bisect and two additions; the cumulative buckets are made at scrape
    time. Bucket ``i`` counts observations ``<= bounds[i]`` (Prometheus' ``le``), the
    last one everything above.
    """

    __slots__ = ("bounds", "counts", "documentation", "name", "total")

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((_float(bound), running))
        buckets.append(("+Inf", running + self.counts[-1]))
        return HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.total
        )


def _float(value: float) -> str:
    """A bucket bound as prometheus-client writes it (``0.5``, ``1.0``, ``10.0``)."""
    return repr(float(value))


class Metrics:
    """The registry of one gateway and the histograms the hot path observes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counters = EngineCounters()
        self.push_latency = LatencyHistogram(
            "gateway_push_duration_seconds",
            "Time from receiving a push to its answer (admission, durable append, publication).",
            _LATENCY_BUCKETS,
        )
        self.fanout_latency = LatencyHistogram(
            "gateway_fanout_duration_seconds",
            "Time to hand one accepted batch to every live subscriber of its store.",
            _LATENCY_BUCKETS,
        )
        self._sources: list[Callable[[], Iterator[Metric]]] = [self._latencies]
        self.registry.register(_Collector(self._sources))

    def _latencies(self) -> Iterator[Metric]:
        yield self.push_latency.family()
        yield self.fanout_latency.family()

    def add_source(self, source: Callable[[], Iterator[Metric]]) -> None:
        """Register a function producing metric families at scrape time."""
        self._sources.append(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, sources: list[Callable[[], Iterator[Metric]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()


def families(
    *,
    engine: EngineCounters,
    sessions: SessionCounters,
    decisions: Counter[str],
    lockouts: Counter[str],
    live_subscribers: int,
    stores_loaded: int,
    handshakes_pending: int = 0,
) -> Iterator[Metric]:
    """The metric families of one gateway, from its components' plain counters."""
    yield labelled_gauge(
        "gateway_connections", "Open client connections.", "transport", sessions.connections
    )
    yield labelled_counter(
        "gateway_connections_opened",
        "Client connections accepted since start.",
        "transport",
        sessions.connections_total,
    )
    yield labelled_counter(
        "gateway_auth_decisions",
        "Sync requests by auth decision (accepted reasons and refusal codes).",
        "reason",
        decisions,
    )
    yield labelled_counter(
        "gateway_auth_lockouts",
        "Client IPs locked out after failed attempts, by the refusal that locked them.",
        "cause",
        lockouts,
    )
    yield counter(
        "gateway_pushes_accepted",
        "Pushes accepted (durably appended).",
        engine.pushes_accepted,
    )
    yield counter(
        "gateway_events_accepted",
        "Events accepted (durably appended).",
        engine.events_accepted,
    )
    yield labelled_counter(
        "gateway_pushes_rejected",
        "Pushes rejected, by reason (server_ahead, backend_mismatch, invalid_batch, storage, "
        "unknown_outcome; forbidden and read_only: refused by the push rules; invalid and "
        "unknown_event: by the event schemas; hook: by the on_push hook).",
        "reason",
        engine.pushes_rejected,
    )
    yield labelled_counter(
        "gateway_pulls_rejected",
        "Pulls refused, by reason (hook: by the on_pull hook).",
        "reason",
        engine.pulls_rejected,
    )
    yield counter(
        "gateway_server_ahead",
        "Pushes answered with ServerAheadError.",
        engine.pushes_rejected["server_ahead"],
    )
    yield counter(
        "gateway_frames_delivered",
        "Live Chunk frames handed to subscribers.",
        engine.frames_delivered,
    )
    yield counter(
        "gateway_send_queue_evictions",
        "Connections closed because their send queue overflowed (1013).",
        sessions.evictions,
    )
    yield labelled_counter(
        "gateway_requests_failed",
        "Requests ended by an unexpected error (closed 1011 / answered 500; logged).",
        "transport",
        sessions.requests_failed,
    )
    yield counter(
        "gateway_handshakes_shed",
        "WebSocket sync handshakes answered 503 OVERLOADED while too many were pending.",
        sessions.handshakes_shed,
    )
    yield gauge(
        "gateway_handshakes_pending",
        "WebSocket requests arrived or arriving and not answered yet (this scrape included).",
        handshakes_pending,
    )
    yield gauge("gateway_live_subscribers", "Live pulls.", live_subscribers)
    yield gauge("gateway_stores_loaded", "Stores held in memory.", stores_loaded)
    yield counter(
        "gateway_stores_unloaded",
        "Stores dropped from memory after store.unload_idle_after without use.",
        engine.stores_unloaded,
    )


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(family: CounterMetricFamily | GaugeMetricFamily, values: Counter[str]) -> None:
    for key, value in sorted(values.items()):
        family.add_metric([key], value)


def labelled_counter(name: str, doc: str, label: str, values: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    _labelled(family, values)
    return family


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled_gauge(name: str, doc: str, label: str, values: Counter[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    _labelled(family, values)
    return family


def file_size(*paths: Path) -> int:
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except OSError:
            pass
    return total
