"""HTTP/1.1 over asyncio streams for :mod:`gateway.client.http` (stdlib only).

Just what the HTTP transport needs: one request at a time per connection, bodies sized by
``Content-Length`` (gateway never chunks its answers), keep-alive within the server's
advertised ``Keep-Alive: timeout``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

from gateway.client.model import ProtocolViolation

# How long an idle connection is reused: half the server's Keep-Alive timeout, or this when it
# did not say. Reusing a connection the server is closing would lose the request.
_IDLE_REUSE: Final = 2.0
_READ_SIZE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP response: status, headers (lower-cased names), body, and whether the
    connection may carry another request."""

    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class Http11:
    """One HTTP/1.1 connection: one exchange at a time, kept alive between them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answered = False
        """Whether a response head arrived during the current exchange."""
        self.reusable_until = 0.0

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry the next request (idle, not closed by the server,
        within the reuse window)."""
        return (
            time.monotonic() < self.reusable_until
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    async def exchange(self, data: bytes, patience: float) -> Response:
        """Write one request and read its answer.

        Args:
            data: The whole request.
            patience: The longest the server may make no progress, in seconds: a large
                answer may take longer than this in all.

        Raises:
            OSError: The connection failed (TimeoutError: the server made no progress).
            EOFError: The server closed the connection before the answer was complete.
            ProtocolViolation: The answer is not HTTP/1.x.
        """
        self.answered = False
        self.writer.write(data)
        try:
            async with asyncio.timeout(patience):
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ProtocolViolation("the server's response head is too large") from None
        self.answered = True
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status_text = rest[:3]
        if not version.startswith("HTTP/1.") or not status_text.isdigit():
            raise ProtocolViolation(f"not an HTTP/1.1 response: {lines[0]!r:.100}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolViolation(f"malformed response header: {line!r:.100}")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is None or "transfer-encoding" in headers:
            # Only a Content-Length body is read; an error status needs none, a 200 does.
            return Response(int(status_text), headers, b"", keep_alive=False)
        if not length.isdigit():
            raise ProtocolViolation(f"invalid Content-Length: {length!r:.50}")
        body = await self._read_body(int(length), patience)
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return Response(int(status_text), headers, body, keep_alive)

    async def _read_body(self, length: int, patience: float) -> bytes:
        parts: list[bytes] = []
        remaining = length
        while remaining:
            async with asyncio.timeout(patience):
                part = await self.reader.read(min(remaining, _READ_SIZE))
            if not part:
                raise asyncio.IncompleteReadError(b"".join(parts), length)
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)

    def idle(self, headers: dict[str, str]) -> None:
        """The exchange is over and the connection may be reused for a while."""
        window = _IDLE_REUSE
        for param in headers.get("keep-alive", "").split(","):
            key, _, value = param.strip().partition("=")
            if key.lower() == "timeout" and value.isdigit():
                window = int(value) / 2
        self.reusable_until = time.monotonic() + window

    def close(self) -> None:
        """Close the connection (an exchange in progress fails)."""
        self.writer.close()
