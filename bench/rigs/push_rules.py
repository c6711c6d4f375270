"""3b. Push rules and event validation (issue 14): what they cost on the push path.

One gateway process, switched by SIGHUP between two configurations that differ only in
``[rules]``: ``plain`` has none; ``rules`` has the rule set of :mod:`bench.ruleset` (a
read-only claim, 10 ``[[rules.push]]`` entries that the pushers' events reach the 9th of, 20
event schemas with ``strict_events = true``). Each runs the durable push load
(:mod:`bench.rigs.durable`: ``dur_pushers`` connections, each on its own store, batches of
``dur_batch`` v1.TodoCreated events, back to back) for ``rules_s`` seconds, in
``rules_rounds`` rounds after a warm-up round that is not kept; within a round the two run
one after the other, their order alternating from round to round. Every token carries the
claims the rules read (role, plan, team), in both configurations.

Why one process: two gateway processes started alike differ by up to a tenth in CPU per
event (an A/A run of two plain gateways gave a median ratio of 0.91), more than the rules
cost. Server CPU per event also moves by a fifth from round to round (SQLite checkpoints,
the neighbours' load), so the figure judged is the median over rounds of the ratio within
each round (``paired.median``: time-adjacent runs on the same process); ``plain`` and
``rules`` also show the cleanest round of each.

Target (``push_rules`` in results.json): server CPU per acked event with the rules and
schemas <= 1.2x without. ``python -m bench --only push_rules`` runs it alone (< 60 s).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.procs import Server
from bench.results import dig, fmt
from bench.rigs.common import Auth
from bench.rigs.durable import DurableResult, durable_push
from bench.ruleset import CLAIMS, EVENT_SCHEMAS, PUSH_RULES

if TYPE_CHECKING:
    from bench.runner import Bench

SCENARIO = "push_rules"
# The target's value is results.push_rules.paired.median (an absolute figure: a ratio).
PAIR = ("paired", "plain")


@dataclass(frozen=True, slots=True, kw_only=True)
class Paired:
    """Rules / plain server CPU per acked event, round by round, and their median."""

    median: float | None
    ratios: list[float]


def _toml(value: object) -> str:
    """A TOML value: strings and lists as JSON writes them, tables inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return orjson.dumps(value).decode()


def rules_toml(schemas: Path) -> str:
    """The ``[rules]`` of the ``rules`` configuration."""
    lines = [
        "[rules]",
        'read_only_claim = "scope"',
        f"event_schemas = {_toml(str(schemas))}",
        "strict_events = true",
    ]
    for rule in PUSH_RULES:
        lines.append("[[rules.push]]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in rule.items())
    return "\n".join(lines) + "\n"


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def _switch(server: Server, config: Path, text: str, reloads: int) -> int:
    """Write ``text`` to the gateway's config file and SIGHUP it; wait for the reload."""
    _write(config, text)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = _read(server.log_path)
        if "reload refused" in log:
            raise RuntimeError(f"push_rules: reload refused: {log[-2000:]}")
        if log.count("configuration reloaded") > reloads:
            return reloads + 1
        await asyncio.sleep(0.01)
    raise RuntimeError("push_rules: the gateway did not reload within 10 s")


async def push_rules(bench: Bench) -> dict[str, object]:
    s = bench.sizes
    auth = Auth(bench.secret, pool=bench.auth.pool, claims=dict(CLAIMS))
    schemas = bench.workdir / "event-schemas.json"
    schemas.write_bytes(orjson.dumps(EVENT_SCHEMAS))
    config = bench.workdir / "push-rules.toml"
    texts = {"plain": "", "rules": rules_toml(schemas)}
    config.write_text(texts["rules"])  # a start with the rules checks them once
    server = await bench.gateway(args=("--config", str(config)))
    mode, reloads = "rules", 0
    samples: dict[str, list[DurableResult]] = {"plain": [], "rules": []}
    try:
        for index in range(s.rules_rounds + 1):
            order = ("plain", "rules") if index % 2 == 0 else ("rules", "plain")
            for name in order:
                if name != mode:
                    reloads = await _switch(server, config, texts[name], reloads)
                    mode = name
                await server.quiet()
                server.name = name  # names the stores and the timings
                label = f"{SCENARIO}#{index}" if index else f"{SCENARIO}-warmup"
                result = await bench.measure(
                    label,
                    server,
                    durable_push(
                        server, auth, pushers=s.dur_pushers, batch=s.dur_batch, duration=s.rules_s
                    ),
                )
                if index:
                    samples[name].append(result)
    finally:
        server.name = "gateway"
        await server.stop()
    ratios = [
        r.server_cpu_us_per_event / p.server_cpu_us_per_event
        for p, r in zip(samples["plain"], samples["rules"], strict=True)
        if r.server_cpu_us_per_event is not None and p.server_cpu_us_per_event
    ]
    paired = Paired(median=statistics.median(ratios) if ratios else None, ratios=ratios)
    picked: dict[str, object] = {name: bench.pick(values) for name, values in samples.items()}
    return picked | {"paired": paired}


def ratios(res: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """What ``report.build`` adds to ``ratios``: rules / plain."""
    by = res.get(SCENARIO)
    if not isinstance(by, dict):
        return {}
    out: dict[str, float | None] = {"paired_median": dig(by.get("paired"), ("median",))}
    for key in ("server_cpu_us_per_event", "acked_events_per_s"):
        over, under = dig(by.get("rules"), (key,)), dig(by.get("plain"), (key,))
        out[key] = over / under if over is not None and under else None
    return {SCENARIO: out}


_ROWS = (
    ("  server CPU per acked event", ("server_cpu_us_per_event",), "us"),
    ("  acked events/s", ("acked_events_per_s",), "1/s"),
    ("  ack latency p99", ("ack_latency", "p99_ms"), "ms"),
)


def table_lines(res: dict[str, Any]) -> list[str]:
    by = res.get(SCENARIO)
    if not isinstance(by, dict) or "rules" not in by:
        return []
    rules, plain = by["rules"], by.get("plain")
    lines = [
        "",
        f"push rules ({len(PUSH_RULES)} rules, {len(EVENT_SCHEMAS)} event schemas, strict), "
        f"durable push {rules.get('pushers')} stores, B={rules.get('batch')}: "
        "with / without rules",
    ]
    for label, path, unit in _ROWS:
        over, under = dig(rules, path), dig(plain, path)
        ratio = fmt(over / under, 3) if over and under else "-"
        lines.append(f"{label} (cleanest rounds): {fmt(over)} / {fmt(under)} {unit} = {ratio}x")
    paired = by.get("paired", {})
    each = ", ".join(fmt(r, 3) for r in paired.get("ratios", []))
    lines.append(
        f"  server CPU per acked event, median of the rounds' ratios: "
        f"{fmt(paired.get('median'), 3)}x (rounds: {each})"
    )
    return lines
