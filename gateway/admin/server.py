"""The admin API's own listener: HTTP/1.1 on asyncio streams, one request per connection.

The admin API sees a handful of requests, not the sync endpoints' traffic, so it does not
share their Sans-I/O fast path: it reads one request head (at most :data:`MAX_HEAD` bytes,
within :data:`READ_TIMEOUT` seconds) and a ``Content-Length`` body, lets
:class:`~gateway.admin.api.AdminApi` answer, and closes. A streamed answer (an export) goes
out chunked, a chunk at a time with backpressure, so its memory stays bounded. It uses the
main listener's TLS certificate when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Final

from gateway.admin.api import MAX_BODY, AdminApi, AdminRequest, AdminResponse, query_of
from gateway.errors import Refusal, RefusalCode
from gateway.logfile import MAX_LINE
from gateway.transport.answer import SERVER_HEADER

logger = logging.getLogger("gateway.admin")

MAX_HEAD: Final = 16 * 1024
READ_TIMEOUT: Final = 10.0
MAX_HEADERS: Final = 64
# The most of an unread import body read (and dropped) after a refusal, so that the client
# sees the answer; a larger rest is cut off.
MAX_DRAIN: Final = 64 * 1024 * 1024


class AdminServer:
    """Serves :class:`AdminApi` on ``host:port``."""

    def __init__(
        self, api: AdminApi, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._api = api
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, ssl=self._ssl, limit=MAX_HEAD
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        assert self._server is not None
        host = str(self._server.sockets[0].getsockname()[0])
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self._ssl else 'http'}://{shown}:{self.port}"

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in tuple(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(tuple(self._handlers))
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
        try:
            read = await _read_request(reader, remote)
            if isinstance(read, Refusal):
                await _write(writer, AdminResponse.refusal(read))
                return
            request, body = read
            await _write(writer, await self._api.handle(request))
            if body is not None:
                await body.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to answer to
        except Exception:
            logger.exception("admin connection failed")
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _bad(code: RefusalCode, message: str) -> Refusal:
    return Refusal(code=code, message=message)


async def _read_request(
    reader: asyncio.StreamReader, remote: str | None
) -> tuple[AdminRequest, _Body | None] | Refusal:
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return _bad(RefusalCode.HEADERS_TOO_LARGE, f"the request head exceeds {MAX_HEAD} bytes")
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return _bad(RefusalCode.BAD_REQUEST, "the request head is not ASCII")
    method, _, rest = lines[0].partition(" ")
    target, _, version = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or not target.startswith("/"):
        return _bad(RefusalCode.BAD_REQUEST, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return _bad(RefusalCode.BAD_REQUEST, "malformed header line")
        if len(headers) >= MAX_HEADERS:
            return _bad(RefusalCode.HEADERS_TOO_LARGE, "too many headers")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        return _bad(RefusalCode.LENGTH_REQUIRED, "send the body with a Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        return _bad(RefusalCode.BAD_REQUEST, "malformed Content-Length")
    length = int(length_text)
    path, _, query_text = target.partition("?")
    query = query_of(query_text)
    if query is None:
        return _bad(RefusalCode.BAD_REQUEST, "the query string is not valid UTF-8")
    if method == "POST" and path.endswith("/import"):
        # An import's body is a whole log: read it line by line as the import goes.
        body = _Body(reader, length)
        request = AdminRequest(
            method=method,
            path=path,
            query=query,
            headers=headers,
            remote_addr=remote,
            lines=body.lines(),
        )
        return request, body
    if length > MAX_BODY:
        return _bad(RefusalCode.PAYLOAD_TOO_LARGE, f"the body exceeds {MAX_BODY} bytes")
    async with asyncio.timeout(READ_TIMEOUT):
        content = await reader.readexactly(length) if length else b""
    request = AdminRequest(
        method=method, path=path, query=query, headers=headers, body=content, remote_addr=remote
    )
    return request, None


class _Body:
    """An import's body of ``length`` bytes, a line at a time (:meth:`lines`); whatever the
    answer left unread is drained (:meth:`drain`) so the client reads the answer instead of a
    reset connection."""

    def __init__(self, reader: asyncio.StreamReader, length: int) -> None:
        self._reader = reader
        self.remaining = length

    async def _read(self) -> bytes:
        async with asyncio.timeout(READ_TIMEOUT):
            chunk = await self._reader.read(min(self.remaining, 64 * 1024))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", self.remaining)
        self.remaining -= len(chunk)
        return chunk

    async def lines(self) -> AsyncIterator[bytes]:
        """The lines (one longer than :data:`~gateway.logfile.MAX_LINE` comes whole, for the
        import to refuse by its size)."""
        pending = b""
        while self.remaining:
            *lines, pending = (pending + await self._read()).split(b"\n")
            for line in lines:
                yield line
            if len(pending) > MAX_LINE:
                yield pending
                return
        if pending:
            yield pending

    async def drain(self) -> None:
        if self.remaining > MAX_DRAIN:
            return  # not worth reading: the client gets its answer, or a reset
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            while self.remaining:
                await self._read()


async def _write(writer: asyncio.StreamWriter, response: AdminResponse) -> None:
    status = http.HTTPStatus(response.status)
    head = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Server: {SERVER_HEADER}",
        "Connection: close",
        "Cache-Control: no-store",
        f"Content-Type: {response.content_type}",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    body = response.body
    if isinstance(body, bytes):
        head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return
    head.append("Transfer-Encoding: chunked")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await _stream(writer, body)


async def _stream(writer: asyncio.StreamWriter, chunks: AsyncIterator[bytes]) -> None:
    """Send ``chunks`` with chunked encoding; a failure mid-stream cuts the response short
    (no final chunk), so the client sees a truncated transfer, never a silently short one."""
    try:
        async for chunk in chunks:
            if chunk:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        logger.exception("admin stream failed; the response is cut short")
        return
    writer.write(b"0\r\n\r\n")
    await writer.drain()
