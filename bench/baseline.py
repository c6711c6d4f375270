"""The baseline: the bare stack gateway is built on, doing nothing but moving the same frames.

A ``websockets`` server (new asyncio API, uvloop, ``compression=None`` unless ``--deflate``)
with no auth, no storage and no framing logic. It tells the few frames of the benchmark apart
by a byte comparison or a substring, never by parsing JSON:

- ``{"_tag":"Ping"}`` is answered with ``{"_tag":"Pong"}``;
- a Pull subscribes the connection to the URL's store and gets one canned empty ``Chunk``
  (or, for a store named ``catchup-*``, the in-memory history, with the gateway's paging);
- a Push is broadcast **verbatim** to the store's subscribers (the pushed frame carries the
  same events as the gateway's ``Chunk``, within a few percent of its size), then acked;
- everything else (Acks) is read and dropped.

Run as ``python -m bench.baseline --port 0``; prints ``listening on ws://HOST:PORT`` on stderr
(``wss://`` with ``--tls-cert`` and ``--tls-key``: TLS as gateway serves it, ``bench.tls``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from bench.frames import PING, chunk_prefix, history_tails

PONG = b'{"_tag":"Pong"}'
PUSH = b'"tag":"SyncWsRpc.Push"'
PULL = b'"tag":"SyncWsRpc.Pull"'
ID = b'"id":'
BACKEND_ID = "baseline-backend-0001"
EMPTY_TAIL = (
    b',"values":[{"batch":[],"pageInfo":{"_tag":"NoMore"},"backendId":"'
    + BACKEND_ID.encode()
    + b'"}]}'
)

stores: dict[str, set[ServerConnection]] = {}
history: list[bytes] = []


def request_id(data: bytes) -> bytes:
    """The JSON string of the request id (the generator always sends ``"id":"<n>"``)."""
    start = data.find(ID) + len(ID)
    end = data.find(b'"', start + 1)
    return data[start : end + 1]


async def handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    store_id = dict(parse_qsl(urlsplit(ws.request.path).query)).get("storeId", "")
    subscribers = stores.setdefault(store_id, set())
    try:
        while True:
            data = await ws.recv(decode=False)
            if data == PING:
                await ws.send(PONG, text=True)
            elif PUSH in data:
                broadcast(subscribers, data, text=True)
                rid = request_id(data)
                await ws.send(
                    b'{"_tag":"Exit","requestId":'
                    + rid
                    + b',"exit":{"_tag":"Success","value":{}}}',
                    text=True,
                )
            elif PULL in data:
                prefix = chunk_prefix(request_id(data))
                if store_id.startswith("catchup-") and history:
                    for tail in history:
                        await ws.send(prefix + tail, text=True)
                else:
                    await ws.send(prefix + EMPTY_TAIL, text=True)
                subscribers.add(ws)
    except ConnectionClosed:
        pass
    finally:
        subscribers.discard(ws)


async def main_async(args: argparse.Namespace) -> None:
    if args.history:
        history.extend(history_tails(args.history, BACKEND_ID))
    options: dict[str, Any] = {
        "compression": "deflate" if args.deflate else None,
        "ping_interval": None,
        "max_size": 4 * 1024 * 1024,
        # As the gateway's default (server.backlog): a reconnect storm must not overflow it.
        "backlog": 4096,
    }
    scheme = "ws"
    if args.tls_cert:
        # Imported here: the plain baseline's RSS (the idle figures) stays without it.
        from bench.tls import server_context

        options["ssl"] = server_context(args.tls_cert, args.tls_key)
        scheme = "wss"
    async with serve(handler, args.host, args.port, **options) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on {scheme}://{args.host}:{port}", file=sys.stderr, flush=True)
        await server.serve_forever()


def serve_main(
    prog: str,
    serve_async: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    more_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """A server's command line: ``--host``, ``--port`` (and ``more_options``), then
    ``serve_async(args)`` on uvloop until interrupted."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    if more_options is not None:
        more_options(parser)
    args = parser.parse_args()
    try:
        uvloop.run(serve_async(args))
    except KeyboardInterrupt:
        pass
    return 0


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history", type=int, default=0, help="events served to catchup-*")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--tls-cert", help="serve wss:// with this PEM certificate chain")
    parser.add_argument("--tls-key", help="... and this PEM key")


def main() -> int:
    return serve_main("bench.baseline", main_async, _options)


if __name__ == "__main__":
    sys.exit(main())
