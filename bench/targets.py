"""The targets of a run: each a ratio of gateway to baseline (or of one variant to another) or
an absolute figure, with its limit; :func:`targets` judges them on a run's results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.results import dig
from bench.rigs import client, push_rules

# name, scenario, path to the value, comparison, limit, what it means
TARGETS: list[tuple[str, str, tuple[str, ...], str, float, str]] = [
    (
        "fanout_cpu",
        "fanout",
        ("paced", "server_cpu_us_per_event"),
        "ratio<=",
        1.4,
        "server CPU per delivered event <= 1.4x baseline (1,000 live subscribers, same load)",
    ),
    (
        "fanout_p99",
        "fanout",
        ("paced", "latency", "p99_ms"),
        "ratio<=",
        1.5,
        "push->live delivery p99 <= 1.5x baseline at the same load",
    ),
    (
        "handshakes",
        "handshake",
        ("handshakes_per_server_cpu_s",),
        "ratio>=",
        0.8,
        "authenticated handshakes per server CPU-second >= 0.8x baseline",
    ),
    (
        "handshakes_storm",
        "handshake",
        ("handshakes_per_server_cpu_s",),
        "ratio>=",
        1.5,
        "the same >= 1.5x baseline: a reconnect storm is nothing but handshakes",
    ),
    (
        "idle_memory",
        "idle",
        ("rss_per_connection_kib",),
        "ratio<=",
        1.1,
        "RSS per idle connection (live pull) <= 1.1x baseline",
    ),
    (
        "c100k_held",
        "c100k",
        ("connections_not_held",),
        "<=",
        0.0,
        "C100k rig: every connection opened and none dropped while held for the minute",
    ),
    (
        "c100k_rss",
        "c100k",
        ("rss_per_connection_kib",),
        "<=",
        8.0,
        "C100k rig: server RSS per authenticated live pull <= 8 KiB (VmRSS, after the minute)",
    ),
    (
        "c100k_p99",
        "c100k",
        ("paced", "latency", "p99_ms"),
        "ratio<=",
        1.5,
        "C100k rig: push->delivery p99 at the hot store's 1,000 subscribers <= 1.5x baseline",
    ),
    (
        "c100k_cpu",
        "c100k",
        ("paced", "server_cpu_us_per_event"),
        "ratio<=",
        1.1,
        "C100k rig: server CPU per delivered event (hot store) <= 1.1x baseline at this size",
    ),
    (
        "durable_push",
        "durable_push",
        ("acked_events_per_s",),
        ">=",
        5000.0,
        "durable acked pushes >= 5,000 events/s (concurrent pushers, batches of dur_batch)",
    ),
    (
        "durable_push_b1",
        "durable_push_single",
        ("acked_events_per_s",),
        ">=",
        5000.0,
        "durable acked pushes >= 5,000 events/s with single-event pushes",
    ),
    (
        "push_rules",
        "push_rules",
        ("median",),
        "<=",
        1.2,
        "server CPU per acked event with 10 push rules + 20 event schemas <= 1.2x without "
        "(median of paired rounds)",
    ),
    (
        "pg_aggregate",
        "pg_throughput",
        ("acked_events_per_s",),
        ">=",
        5000.0,
        "PostgreSQL, 2 nodes, 200 stores: durable acked events/s in aggregate >= 5,000 (B=1)",
    ),
    (
        "pg_hot_store",
        "pg_throughput",
        ("hot_alone", "pushes_per_s"),
        ">=",
        300.0,
        "PostgreSQL, 2 nodes: acked pushes/s on one hot store >= 300 (16 clients, B=1; its own "
        "window: under the aggregate load it gets its share of a saturated CPU, reported)",
    ),
    (
        "storm_time",
        "storm",
        ("storm_s",),
        "ratio<=",
        1.5,
        "reconnect storm: SIGTERM to every client live + caught up <= 1.5x the baseline's "
        "(SIGTERM to every client accepted)",
    ),
    (
        "storm_failed",
        "storm",
        ("failed_handshakes",),
        "<=",
        0.0,
        "reconnect storm: no handshake times out, is reset or refused (503s are shed, fine)",
    ),
    (
        "storm_missed",
        "storm",
        ("events_missed",),
        "<=",
        0.0,
        "reconnect storm: no client misses an event pushed during the storm",
    ),
    (
        "catchup",
        "catchup",
        ("events_per_s",),
        ">=",
        50000.0,
        "catch-up of the history >= 50,000 events/s",
    ),
    (
        "client_follow",
        "client_follow",
        ("events_per_s",),
        ">=",
        100_000.0,
        "Python client: events(live=False) over a 100k-event store >= 100,000 events/s",
    ),
    (
        "client_commit",
        "client_commit",
        ("acked_events_per_s",),
        "ratio>=",
        0.5,
        "Python client: commit() from concurrent tasks >= 0.5x the generator's pipelined writer",
    ),
    (
        "client_many",
        "client_commit_many",
        ("acked_events_per_s",),
        "ratio>=",
        0.5,
        "Python client: commit_many() batches >= 0.5x the generator's pipelined writer",
    ),
]
# The pair a scenario's targets compare (results.<scenario>.<name>); the rest compare
# gateway with baseline.
PAIRS: dict[str, tuple[str, str]] = {scenario: client.PAIR for scenario in client.SCENARIOS}
PAIRS[push_rules.SCENARIO] = push_rules.PAIR


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    name: str
    meaning: str
    metric: str
    gateway: float | None
    baseline: float | None
    value: float | None
    kind: str
    limit: float
    comparison: str
    met: bool | None


def targets(res: dict[str, Any], *, smoke: bool) -> list[Target]:
    """Every target, judged on the results (never at toy sizes: ``met`` is None)."""
    out = []
    for name, scenario, path, op, limit, meaning in TARGETS:
        over, under = PAIRS.get(scenario, ("gateway", "baseline"))
        gw_value = dig(res.get(scenario, {}).get(over), path)
        base_value = dig(res.get(scenario, {}).get(under), path)
        if op.startswith("ratio"):
            value = gw_value / base_value if gw_value is not None and base_value else None
            met = None if value is None else (value <= limit if op == "ratio<=" else value >= limit)
        else:
            value = gw_value
            met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        if smoke:
            met = None  # toy sizes: the numbers say nothing about the targets
        out.append(
            Target(
                name=name,
                meaning=meaning,
                metric=f"{scenario}.{'.'.join(path)}",
                gateway=gw_value,
                baseline=base_value,
                value=value,
                kind=f"{over}/{under}" if op.startswith("ratio") else "absolute",
                limit=limit,
                comparison="<=" if op.endswith("<=") else ">=",
                met=met,
            )
        )
    return out
