"""The lock-free latency histogram exposes what prometheus-client's Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import _LATENCY_BUCKETS, LatencyHistogram, Metrics


def samples(text: bytes) -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_same_exposition_as_prometheus_client() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    values = [rng.choice(_LATENCY_BUCKETS) for _ in range(200)]  # on the bounds: le is <=
    values += [rng.expovariate(50) for _ in range(2000)] + [0.0, 11.0, 1e9]
    registry = CollectorRegistry()
    reference = Histogram("h_seconds", "help", buckets=_LATENCY_BUCKETS, registry=registry)
    ours = LatencyHistogram("h_seconds", "help", _LATENCY_BUCKETS)
    for value in values:
        reference.observe(value)
        ours.observe(value)
    mine = CollectorRegistry()
    mine.register(_Once(ours))
    expected, got = samples(generate_latest(registry)), samples(generate_latest(mine))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == value if not name.endswith("_sum") else abs(got[name] - value) < 1e-6


def test_metrics_render_both_latencies() -> None:
    metrics = Metrics()
    metrics.push_latency.observe(0.003)
    text = metrics.render().decode()
    assert 'gateway_push_duration_seconds_bucket{le="0.005"} 1.0' in text
    assert 'gateway_push_duration_seconds_bucket{le="0.0025"} 0.0' in text
    assert "gateway_fanout_duration_seconds_count 0.0" in text


class _Once:
    def __init__(self, histogram: LatencyHistogram) -> None:
        self.histogram = histogram

    def collect(self):  # type: ignore[no-untyped-def]
        yield self.histogram.family()
