"""A TCP proxy on 127.0.0.1 that a test can cut and restore (a network partition in-process).

Point a client (a gateway node's ``store.dsn``) at :attr:`TcpProxy.port` instead of the real
server. :meth:`TcpProxy.cut` aborts every proxied connection (both sides see a reset) and makes
the proxy refuse new ones: a connection it accepts while cut is reset at once, before a byte
reaches the server. :meth:`TcpProxy.stall` is the silent kind of partition (a NAT or a
middlebox that lost the flow): proxied connections stay open but every byte sent on them in
either direction from then on is dropped, for good, and new connections are refused.
:meth:`TcpProxy.restore` lets new connections through again.

:meth:`TcpProxy.wait_accepted` waits until the proxy has accepted a number of connections (a
client reconnecting shows up there); ``on_downstream`` sees every chunk the server sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class _Flow:
    """Whether one proxied connection still forwards (False after a stall, for good)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    flow: _Flow,
    tap: Callable[[bytes], None] | None = None,
) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            if not flow.open:
                continue  # a black hole: the bytes are lost, nothing is reset
            if tap is not None:
                tap(data)
            writer.write(data)
            await writer.drain()


class TcpProxy:
    """Forwards connections on ``127.0.0.1:port`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepting = True
        self.cuts = 0
        self.aborted = 0
        self.accepted = 0
        self.on_downstream: Callable[[bytes], None] | None = None
        """Called with each chunk forwarded from the server to a client."""
        self._accepted_changed = asyncio.Event()
        self._flows: set[_Flow] = set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def cut(self) -> None:
        """Reset every proxied connection and refuse new ones until :meth:`restore`."""
        self.accepting = False
        self.cuts += 1
        for writer in tuple(self._writers):
            self.aborted += 1
            writer.transport.abort()

    def stall(self) -> None:
        """Drop every byte on the proxied connections from now on, without closing any, and
        refuse new connections until :meth:`restore`."""
        self.accepting = False
        for flow in self._flows:
            flow.open = False

    def restore(self) -> None:
        self.accepting = True

    async def wait_accepted(self, count: int, within: float) -> None:
        """Wait until the proxy has accepted ``count`` connections in all (those it refused
        while cut or stalled included); fail the test after ``within`` seconds."""

        async def reached() -> None:
            while self.accepted < count:
                self._accepted_changed.clear()
                await self._accepted_changed.wait()

        try:
            await asyncio.wait_for(reached(), within)
        except TimeoutError:
            raise AssertionError(
                f"the proxy accepted {self.accepted} connections, not {count}, within {within}s"
            ) from None

    def refusing(self) -> bool:
        return not self.accepting

    async def close(self) -> None:
        self.accepting = False
        if self._server is not None:
            self._server.close()
        for writer in tuple(self._writers):
            writer.transport.abort()
        for task in tuple(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(tuple(self._handlers))
        if self._server is not None:
            await self._server.wait_closed()

    def _downstream(self, data: bytes) -> None:
        if self.on_downstream is not None:
            self.on_downstream(data)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        self._accepted_changed.set()
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing():
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        if self.refusing():  # cut while connecting upstream
            writer.transport.abort()
            upstream.transport.abort()
            return
        pair = (writer, upstream)
        self._writers.update(pair)
        flow = _Flow()
        self._flows.add(flow)
        pipes = [
            asyncio.ensure_future(_pipe(reader, upstream, flow)),
            asyncio.ensure_future(_pipe(upstream_reader, writer, flow, self._downstream)),
        ]
        try:
            # Either side ending ends the connection: abort both, as a cut does.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._flows.discard(flow)
            for side in pair:
                self._writers.discard(side)
                side.transport.abort()
            for pipe in pipes:
                pipe.cancel()
            await asyncio.wait(pipes)
