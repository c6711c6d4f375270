"""The report of a run: gateway/baseline ratios, the targets (judged by ``bench.targets``), the
printed table, and results.json.

:func:`build` turns the results (frozen dataclasses, ``bench.results``) into the plain data
that results.json holds; :func:`table` prints from that plain data, so a saved results.json
can be printed again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bench.machine import Machine, SourceState
from bench.results import dig, fmt, to_json
from bench.rigs import c100k, client, handshake_tls, pg_throughput, push_rules, storm
from bench.sizes import Sizes
from bench.studies import compression, floor
from bench.targets import targets

_RATIO_KEYS = (
    "handshakes_per_s",
    "server_cpu_us_per_handshake",
    "rss_per_connection_kib",
    "acked_events_per_s",
    "server_cpu_us_per_event",
    "events_per_s",
    "delivered_events_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
)


def _ratios(gw: Any, base: Any, prefix: str = "") -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    if not isinstance(gw, dict) or not isinstance(base, dict):
        return out
    for key, value in gw.items():
        other = base.get(key)
        if isinstance(value, dict):
            out.update(_ratios(value, other, f"{prefix}{key}."))
        elif (
            key in _RATIO_KEYS and isinstance(value, int | float) and isinstance(other, int | float)
        ):
            out[f"{prefix}{key}"] = value / other if other else None
    return out


def build(
    *,
    smoke: bool,
    machine: Machine,
    source: SourceState,
    sizes: Sizes,
    timings: dict[str, float],
    results: Mapping[str, object],
) -> dict[str, Any]:
    """The report as results.json holds it."""
    res: dict[str, Any] = to_json(results)
    ratios: dict[str, dict[str, float | None]] = {}
    for scenario, by_server in res.items():
        if scenario == "compression" or not isinstance(by_server, dict):
            continue
        if "gateway" in by_server and "baseline" in by_server:
            ratios[scenario] = _ratios(by_server["gateway"], by_server["baseline"])
    extras = handshake_tls.ratios(res) | client.ratios(res) | push_rules.ratios(res)
    for scenario, extra in extras.items():
        ratios.setdefault(scenario, {}).update(extra)
    return {
        "mode": "smoke" if smoke else "full",
        "machine": to_json(machine),
        "gateway_source": to_json(source),
        "sizes": asdict(sizes),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timings_s": timings,
        "results": res,
        "ratios": ratios,
        "targets": to_json(targets(res, smoke=smoke)),
    }


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


# -- the table ---------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    res = report["results"]
    rows: list[tuple[str, str, Any, Any, str]] = []

    def row(label: str, scenario: str, path: tuple[str, ...], unit: str, digits: int = 1) -> None:
        if scenario not in res:
            return
        by = res.get(scenario, {})
        gw, base = dig(by.get("gateway"), path), dig(by.get("baseline"), path)
        rows.append((label, unit, gw, base, fmt(gw / base, 2) if gw and base else "-"))

    row("handshakes/s (JWT + first chunk), wall clock", "handshake", ("handshakes_per_s",), "1/s")
    row(
        "  handshakes per server CPU-second",
        "handshake",
        ("handshakes_per_server_cpu_s",),
        "1/s",
    )
    row("  server CPU per handshake", "handshake", ("server_cpu_us_per_handshake",), "us")
    row("  generator CPU per handshake", "handshake", ("generator_cpu_us_per_handshake",), "us")
    row("  connect latency p50", "handshake", ("connect_latency", "p50_ms"), "ms", 2)
    row("  connect latency p99", "handshake", ("connect_latency", "p99_ms"), "ms", 2)
    rows.extend(handshake_tls.table_rows(res))
    fan = res.get("fanout", {}).get("gateway", {})
    paced = fan.get("paced", {})
    label = (
        f"fan-out {fan.get('stores')}x{fan.get('subscribers_per_store')}, B={fan.get('batch')}, "
        f"paced {fmt(paced.get('offered_events_per_s'))} ev/s"
    )
    if fan:
        rows.append((label, "", None, None, ""))
    row("  server CPU per delivered event", "fanout", ("paced", "server_cpu_us_per_event"), "us")
    row("  generator CPU per event", "fanout", ("paced", "generator_cpu_us_per_event"), "us")
    row("  delivered events/s", "fanout", ("paced", "delivered_events_per_s"), "1/s")
    row("  push->delivery latency p50", "fanout", ("paced", "latency", "p50_ms"), "ms", 2)
    row("  push->delivery latency p99", "fanout", ("paced", "latency", "p99_ms"), "ms", 2)
    row("  push->delivery latency max", "fanout", ("paced", "latency", "max_ms"), "ms", 2)
    paired = dig(res.get("fanout", {}).get("gateway"), ("paced", "p99_ratio_paired_median"))
    if paired is not None:
        rows.append(
            ("  p99 ratio, median over time-adjacent slice pairs", "", None, None, fmt(paired, 2))
        )
    row("  bytes per delivered frame", "fanout", ("paced", "bytes_per_frame"), "B", 0)
    sat = fan.get("saturated", {})
    if sat:
        rows.append((f"fan-out saturated (window {sat.get('window')})", "", None, None, ""))
    row("  delivered events/s", "fanout", ("saturated", "delivered_events_per_s"), "1/s")
    row(
        "  server CPU per delivered event", "fanout", ("saturated", "server_cpu_us_per_event"), "us"
    )
    row("  generator CPU per event", "fanout", ("saturated", "generator_cpu_us_per_event"), "us")
    row("  server CPU utilisation", "fanout", ("saturated", "server_cpu_util"), "cpu", 2)
    row("  generator CPU utilisation", "fanout", ("saturated", "generator_cpu_util"), "cpu", 2)
    row("  latency p99", "fanout", ("saturated", "latency", "p99_ms"), "ms", 2)
    dur = res.get("durable_push", {}).get("gateway", {})
    row(
        f"durable push {dur.get('pushers')} stores, B={dur.get('batch')}: acked events/s",
        "durable_push",
        ("acked_events_per_s",),
        "1/s",
    )
    row("  ack latency p99", "durable_push", ("ack_latency", "p99_ms"), "ms", 2)
    row("  server CPU per event", "durable_push", ("server_cpu_us_per_event",), "us")
    if "durable_push_single" in res:
        row(
            "durable push, B=1: acked events/s",
            "durable_push_single",
            ("acked_events_per_s",),
            "1/s",
        )
        row("  server CPU per event", "durable_push_single", ("server_cpu_us_per_event",), "us")
    idle = res.get("idle", {}).get("gateway", {})
    row(
        f"idle {idle.get('connections')} live pulls: RSS per connection",
        "idle",
        ("rss_per_connection_kib",),
        "KiB",
        2,
    )
    row("  RSS after", "idle", ("rss_after_mib",), "MiB")
    rows.extend(c100k.table_rows(res))
    cu = res.get("catchup", {}).get("gateway", {})
    row(f"catch-up of {cu.get('events')} events", "catchup", ("events_per_s",), "ev/s")
    row("  server CPU per event", "catchup", ("server_cpu_us_per_event",), "us", 2)
    f2 = res.get("fanout2", {})
    if "gateway" in f2:
        g = f2["gateway"]
        p = g["paced"]
        rows.append(
            (
                f"2-node fan-out {g['stores']}x{g['subscribers_per_store']} (PostgreSQL), "
                f"B=1, {fmt(p['offered_pushes_per_s'])} pushes/s via node 1",
                "",
                None,
                None,
                "",
            )
        )
        row("  achieved pushes/s (node 1)", "fanout2", ("paced", "achieved_pushes_per_s"), "1/s")
        row("  delivered events/s", "fanout2", ("paced", "delivered_events_per_s"), "1/s")
        for key, where in (
            ("latency_same_node", "same node"),
            ("latency_cross_node", "cross-node"),
        ):
            for q in ("p50", "p99", "max"):
                row(f"  push->delivery {q}, {where}", "fanout2", ("paced", key, f"{q}_ms"), "ms", 2)
        row("  push ack latency p99", "fanout2", ("paced", "push_ack_latency", "p99_ms"), "ms", 2)
        row("  order errors (must be 0)", "fanout2", ("paced", "order_errors"), "n")
        row(
            f"  events delivered (expected {p['events_expected']}, all: {p['all_delivered']})",
            "fanout2",
            ("paced", "events_delivered"),
            "n",
        )
        row(
            "  server CPU per delivered event (both nodes)",
            "fanout2",
            ("paced", "server_cpu_us_per_event"),
            "us",
        )
        row(
            "  PostgreSQL CPU per push (unpinned)",
            "fanout2",
            ("paced", "postgres_cpu_us_per_push"),
            "us",
        )

    rows.extend(pg_throughput.table_rows(res))
    rows.extend(storm.table_rows(res))
    header = ("measurement", "unit", "gateway", "baseline", "gw/base")
    cells = [header] + [
        (r[0], r[1], fmt(r[2]) if r[1] else "", fmt(r[3]) if r[1] else "", r[4]) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = []
    for i, c in enumerate(cells):
        lines.append(
            "  ".join(c[j].ljust(widths[j]) if j < 2 else c[j].rjust(widths[j]) for j in range(5))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if "skipped" in f2 or "error" in f2:
        lines.append("")
        lines.append(f"two-node fan-out: {f2.get('skipped') or 'FAILED: ' + f2.get('error', '')}")
    elif f2:
        lines.append("")
        lines.append(
            "two-node fan-out: informational, no target; subscribers split evenly over both "
            "nodes, both nodes on the server CPU, PostgreSQL unpinned (its CPU not counted above)"
        )
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        value = fmt(t["value"], 2)
        kind = f"x {t['kind'].partition('/')[2]}" if "/" in t["kind"] else ""
        lines.append(
            f"  [{verdict:>6}] {t['name']:<13} {value}{kind} (need {t['comparison']} "
            f"{fmt(t['limit'], 2)})  {t['meaning']}"
        )
    lines.extend(floor.table_lines(res))
    lines.extend(client.table_lines(res))
    lines.extend(push_rules.table_lines(res))
    lines.extend(compression.table_lines(res))
    noise = []
    for scenario in ("handshake", "handshake_tls", "fanout"):
        for name in ("baseline", "gateway"):
            data = res.get(scenario, {}).get(name, {})
            for part in (data, data.get("paced", {}), data.get("saturated", {})):
                label = scenario + (f".{part.get('phase')}" if part.get("phase") else "")
                if "interference" in part and "rounds" in part:
                    noise.append(
                        f"{label}/{name} round {part.get('round_chosen')}: "
                        f"{part['interference']:.2f}"
                    )
                elif "interference" in part and "slices_kept" in part:
                    noise.append(
                        f"{label}/{name} slices {part['slices_kept']} of {part['slices']}: "
                        f"{part['interference']:.2f}"
                    )
    if noise:
        lines.append("")
        lines.append(
            "rounds kept (least foreign CPU + steal on the benchmark CPUs, in CPUs): "
            + "; ".join(noise)
        )
    m = report["machine"]
    lines.append("")
    lines.append(
        f"machine: {m['cpus_online']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, websockets {m['websockets']}, "
        f"uvloop {m['uvloop']}; data dir on {m['data_dir_fs']}"
    )
    lines.append(f"pinning: {m['pinning']} (separate processes, os.sched_setaffinity)")
    src = report.get("gateway_source", {})
    dirty = f", uncommitted: {', '.join(src['changed'])}" if src.get("changed") else ""
    lines.append(f"gateway code: {src.get('root')} at {src.get('commit')}{dirty}")
    lines.append(f"mode: {report['mode']}; total {report['timings_s'].get('total', 0):.0f} s")
    return "\n".join(lines)
