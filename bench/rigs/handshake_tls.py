"""1b. Handshakes over TLS: the handshake measurement (:mod:`bench.rigs.handshake`) on a
gateway and a baseline serving wss:// (``handshake_tls`` in results.json).

Both servers present a server certificate for 127.0.0.1 (ECDSA P-256) signed by a throwaway
CA made for the run (:mod:`bench.tls`); the load generator verifies it and makes a full TLS
handshake (no session resumption) on every connection, then the same authenticated upgrade
and live Pull as in plain ``handshake``. It runs right after the plain measurement, on a
second pair of server processes, in the same alternating rounds. Informational, no target:
the table shows gateway-TLS / baseline-TLS, and TLS / plain for each server
(``ratios.handshake_tls_vs_plain``, when the plain ``handshake`` ran too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bench.procs import Server
from bench.results import Picked, dig, fmt
from bench.rigs.handshake import HandshakeResult
from bench.tls import make_certs

if TYPE_CHECKING:
    from bench.runner import Bench

PER_CPU_S = "handshakes_per_server_cpu_s"
CPU_US = "server_cpu_us_per_handshake"
# Compared between TLS and plain, per server.
_VS_PLAIN = (PER_CPU_S, CPU_US, "handshakes_per_s")


async def handshake_tls(
    bench: Bench, shake: Callable[[Server], Awaitable[HandshakeResult]]
) -> dict[str, Picked[HandshakeResult]]:
    """``shake`` (the plain handshake measurement) on a baseline and a gateway serving wss://,
    in ``sizes.rounds`` alternating rounds, the cleanest kept."""
    certs = make_certs(bench.workdir / "tls")
    base = await bench.baseline(certs=certs)
    try:
        gw = await bench.gateway(certs=certs)
        try:
            return await bench.rounds("handshake_tls", (base, gw), bench.sizes.rounds, shake)
        finally:
            await gw.stop()
    finally:
        await base.stop()


def _ratio(over: Any, under: Any) -> float | None:
    if isinstance(over, int | float) and isinstance(under, int | float) and under:
        return over / under
    return None


def ratios(res: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """What ``report.build`` adds to ``ratios``: gateway/baseline handshakes per server
    CPU-second over TLS, and ``handshake_tls_vs_plain`` (``gateway.<key>``: the gateway
    over TLS / the plain gateway; ``baseline.<key>`` likewise)."""
    tls = res.get("handshake_tls")
    if not isinstance(tls, dict):
        return {}
    out = {
        "handshake_tls": {
            PER_CPU_S: _ratio(dig(tls, ("gateway", PER_CPU_S)), dig(tls, ("baseline", PER_CPU_S)))
        }
    }
    plain = res.get("handshake")
    if isinstance(plain, dict):
        out["handshake_tls_vs_plain"] = {
            f"{name}.{key}": _ratio(dig(tls, (name, key)), dig(plain, (name, key)))
            for name in ("gateway", "baseline")
            for key in _VS_PLAIN
        }
    return out


# label, path to the value, unit: the TLS lines of the printed table
_ROWS = (
    ("  handshakes per server CPU-second", (PER_CPU_S,), "1/s"),
    ("  server CPU per handshake", (CPU_US,), "us"),
    ("  handshakes/s, wall clock", ("handshakes_per_s",), "1/s"),
    ("  generator CPU per handshake", ("generator_cpu_us_per_handshake",), "us"),
    ("  connect latency p50", ("connect_latency", "p50_ms"), "ms"),
    ("  connect latency p99", ("connect_latency", "p99_ms"), "ms"),
)


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, Any, Any, str]]:
    """The rows of ``report.table`` (label, unit, gateway, baseline, gw/base)."""
    tls = res.get("handshake_tls")
    if not isinstance(tls, dict):
        return []
    gw, base = tls.get("gateway"), tls.get("baseline")
    rows: list[tuple[str, str, Any, Any, str]] = [
        ("handshakes over TLS (wss://, ECDSA P-256, full handshakes)", "", None, None, "")
    ]
    for label, path, unit in _ROWS:
        g, b = dig(gw, path), dig(base, path)
        rows.append((label, unit, g, b, fmt(g / b, 2) if g and b else "-"))
    vs = ratios(res).get("handshake_tls_vs_plain", {})
    for label, key in (
        ("  TLS / plain: handshakes per server CPU-second", PER_CPU_S),
        ("  TLS / plain: server CPU per handshake", CPU_US),
    ):
        g, b = vs.get(f"gateway.{key}"), vs.get(f"baseline.{key}")
        if g is not None or b is not None:
            rows.append((label, "x", fmt(g, 2), fmt(b, 2), ""))
    return rows
