"""The compression study (finished): the baseline server with and without
permessage-deflate, for memory per connection, CPU per delivered event and wire bytes.

It is why gateway does not offer compression (README, "Performance"). It runs at the end of
``python -m bench`` unless ``--no-compression`` (or an ``--only`` without ``compression``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from bench.results import Latency, fmt
from bench.rigs.fanout import FanoutRig
from bench.rigs.idle import idle

if TYPE_CHECKING:
    from bench.runner import Bench

# Events per pushed batch in the study's fan-out.
BATCH = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionResult:
    connections: int
    rss_per_connection_kib: float
    fanout_batch: int
    server_cpu_us_per_event: float | None
    generator_cpu_us_per_event: float | None
    wire_bytes_per_event: float | None
    latency: Latency
    payload_bytes_per_frame: float
    delivered_events_per_s: float


def deflate_extensions() -> list[Any]:
    """What a browser offers: permessage-deflate with client_max_window_bits."""
    return [ClientPerMessageDeflateFactory()]


async def compression_study(bench: Bench) -> dict[str, CompressionResult]:
    """The bare stack with and without permessage-deflate: memory, CPU, bytes."""
    s = bench.sizes
    study: dict[str, CompressionResult] = {}
    for deflate in (False, True):
        ext = deflate_extensions() if deflate else None
        server = await bench.baseline(compression=deflate)
        try:
            mem = await bench.measure(
                "compression_idle",
                server,
                idle(
                    server,
                    bench.auth,
                    connections=s.comp_connections,
                    stores=s.idle_stores,
                    concurrency=s.concurrency,
                    warmup=s.idle_warmup // 4 or 1,
                    settle=s.settle_s,
                    extensions=ext,
                ),
            )
            rig = FanoutRig(
                server,
                bench.auth,
                stores=s.comp_stores,
                subscribers=s.comp_subscribers,
                batch=BATCH,
            )
            await rig.open(concurrency=s.concurrency, extensions=ext)
            try:
                sat = await bench.measure(
                    "compression_fanout",
                    server,
                    rig.paced(s.comp_rate, s.comp_paced_s),
                )
            finally:
                rig.close()
        finally:
            await server.stop()
        study["deflate" if deflate else "none"] = CompressionResult(
            connections=s.comp_connections,
            rss_per_connection_kib=mem.rss_per_connection_kib,
            fanout_batch=BATCH,
            server_cpu_us_per_event=sat.server_cpu_us_per_event,
            generator_cpu_us_per_event=sat.generator_cpu_us_per_event,
            wire_bytes_per_event=sat.wire_bytes_per_event,
            latency=sat.latency,
            payload_bytes_per_frame=sat.bytes_per_frame,
            delivered_events_per_s=sat.delivered_events_per_s,
        )
    return study


def table_lines(res: dict[str, Any]) -> list[str]:
    """The study's lines of the printed table, from results.json's ``results``."""
    comp = res.get("compression")
    if not comp:
        return []
    lines = ["", "compression study (baseline server, permessage-deflate vs none):"]
    for key, data in comp.items():
        lines.append(
            f"  {key:<8} RSS/conn {fmt(data['rss_per_connection_kib'], 1)} KiB, "
            f"server CPU/event {fmt(data['server_cpu_us_per_event'], 1)} us, "
            f"wire bytes/event {fmt(data['wire_bytes_per_event'], 0)}"
        )
    return lines
