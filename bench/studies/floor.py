"""The floor: the baseline's job on websockets' Sans-I/O ``ServerProtocol``, no asyncio API.

Same behaviour as :mod:`bench.baseline` (Pong, canned first Chunk, Push relayed verbatim to
the store's subscribers, then acked), but each connection is one ``asyncio.Protocol``
driving ``ServerProtocol`` directly: no handler task, no ``Assembler``, no ``recv()``
future per message. ``python -m bench`` measures it next to the baseline for the handshake,
fan-out and idle measurements (unless ``--no-floor``), to show what the stack allows when
gateway owns its connections (gateway already builds a ``ServerProtocol`` itself in
``Listener.open_websocket``). A finished study: its figures are in the README.

Run as ``python -m bench.studies.floor --port 0``; prints ``listening on ws://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from bench.baseline import EMPTY_TAIL, PONG, PULL, PUSH, request_id, serve_main
from bench.frames import PING, chunk_prefix
from bench.procs import Server
from bench.results import dig, fmt

OP_TEXT = Opcode.TEXT
stores: dict[str, set[FloorConnection]] = {}


class FloorConnection(asyncio.Protocol):
    __slots__ = ("proto", "subscribers", "transport")

    def __init__(self) -> None:
        self.proto = ServerProtocol(max_size=4 * 1024 * 1024)
        self.transport: asyncio.Transport | None = None
        self.subscribers: set[FloorConnection] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if type(event) is Frame:
                if event.opcode is OP_TEXT:
                    self.on_text(event.data)  # type: ignore[arg-type]
            elif type(event) is Request:
                proto.send_response(proto.accept(event))
                store_id = dict(parse_qsl(urlsplit(event.path).query)).get("storeId", "")
                self.subscribers = stores.setdefault(store_id, set())
        self.flush()

    def on_text(self, data: bytes) -> None:
        if data == PING:
            self.proto.send_text(PONG)
        elif PUSH in data:
            for sub in tuple(self.subscribers or ()):
                sub.send(data)
            self.proto.send_text(
                b'{"_tag":"Exit","requestId":'
                + request_id(data)
                + b',"exit":{"_tag":"Success","value":{}}}'
            )
        elif PULL in data:
            self.proto.send_text(chunk_prefix(request_id(data)) + EMPTY_TAIL)
            if self.subscribers is not None:
                self.subscribers.add(self)

    def send(self, data: bytes) -> None:
        self.proto.send_text(data)
        self.flush()

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                transport.close()
                return
        if self.proto.close_expected():
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.subscribers is not None:
            self.subscribers.discard(self)
        self.transport = None


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {"backlog": 1024}
    server = await loop.create_server(FloorConnection, args.host, args.port, **options)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on ws://{args.host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    return serve_main("bench.studies.floor", main_async)


def floor_server(log_path: Path, cpus: set[int]) -> Server:
    """The floor as a server under test (``python -m bench.studies.floor``)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "bench.studies.floor", "--port", "0"]
    return Server("floor", argv, env, cpus, log_path)


# name, scenario, path to the value, unit: the floor's lines of the printed table
_TABLE = (
    ("server CPU per handshake", "handshake", ("server_cpu_us_per_handshake",), "us"),
    ("fan-out server CPU per event", "fanout", ("paced", "server_cpu_us_per_event"), "us"),
    ("fan-out p99", "fanout", ("paced", "latency", "p99_ms"), "ms"),
    ("RSS per idle connection", "idle", ("rss_per_connection_kib",), "KiB"),
)


def table_lines(res: dict[str, Any]) -> list[str]:
    """The floor's lines of the printed table, from results.json's ``results``."""
    lines = []
    for label, scenario, path, unit in _TABLE:
        value = dig(res.get(scenario, {}).get("floor"), path)
        base = dig(res.get(scenario, {}).get("baseline"), path)
        if value is not None:
            ratio = f" ({value / base:.2f}x baseline)" if base else ""
            lines.append(f"  {label}: {fmt(value, 2)} {unit}{ratio}")
    if not lines:
        return []
    return [
        "",
        "floor (bench.floor: the baseline's job on Sans-I/O ServerProtocol, no asyncio API):",
        *lines,
    ]


if __name__ == "__main__":
    sys.exit(main())
