"""A TCP proxy on 127.0.0.1 that a test can cut and restore (a network partition in-process).

Point a client (a gateway node's ``store.dsn``) at :attr:`TcpProxy.port` instead of the real
server. :meth:`TcpProxy.cut` aborts every proxied connection (both sides see a reset) and makes
the proxy refuse new ones: a connection it accepts while cut is reset at once, before a byte
reaches the server. :meth:`TcpProxy.restore` lets connections through again.
"""

from __future__ import annotations

import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
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

    def restore(self) -> None:
        self.accepting = True

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
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
        pipes = [
            asyncio.ensure_future(_pipe(reader, upstream)),
            asyncio.ensure_future(_pipe(upstream_reader, writer)),
        ]
        try:
            # Either side ending ends the connection: abort both, as a cut does.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for side in pair:
                self._writers.discard(side)
                side.transport.abort()
            for pipe in pipes:
                pipe.cancel()
            await asyncio.wait(pipes)
