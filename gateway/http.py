"""The HTTP transport (spec §10): a small HTTP/1.1 server for ``POST`` and ``OPTIONS``.

Each POST carries one JSON ``Request``; the answer is a JSON array of the frames the
WebSocket transport would have sent for it, ending with its ``Exit``. Requests are handled
one at a time per connection (reading pauses meanwhile), with keep-alive. Bodies must carry
a ``Content-Length``; chunked uploads are refused with 411.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway import __version__, protocol
from gateway.handshake import (
    Admission,
    NotSync,
    PayloadContext,
    Refusal,
    parse_target,
    redact_target,
)
from gateway.protocol import FrameError, PayloadError, Request
from gateway.store import StoreError

if TYPE_CHECKING:
    from gateway.server import Frontend

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 32 * 1024
# How long a connection closed after an error answer keeps draining the client's input.
LINGER_SECONDS = 2.0
MAX_HEADERS = 100


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def _refusal(refusal: Refusal) -> HttpResponse:
    return HttpResponse(refusal.status, refusal.body(), headers=list(refusal.headers))


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection of the HTTP transport."""

    def __init__(self, frontend: Frontend, transport: asyncio.Transport) -> None:
        self._frontend = frontend
        self._transport = transport
        self._buffer = bytearray()
        self._busy = False
        self._closing = False
        self._lingering = False
        self._idle: asyncio.TimerHandle | None = None
        peer = transport.get_extra_info("peername")
        self._remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
        frontend.engine.counters.connections["http"] += 1
        frontend.engine.counters.connections_total["http"] += 1
        self._arm_idle()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the answer is out; input is discarded until the peer closes
        self._buffer += data
        if not self._busy:
            self._next()

    def eof_received(self) -> bool:
        # Finish the request in progress, if any, then close.
        self._closing = True
        if not self._busy or self._lingering:
            self._transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        if self in self._frontend.http_connections:
            self._frontend.http_connections.discard(self)
            self._frontend.engine.counters.connections["http"] -= 1

    # -- lifecycle ------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(
            self._frontend.config.server.http_keepalive_timeout, self._transport.close
        )

    def shutdown(self) -> None:
        """Server shutdown: close now if idle, else after the current response."""
        self._closing = True
        if not self._busy:
            self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    # -- parsing --------------------------------------------------------------------------

    def _fail(self, status: int, code: str, message: str) -> None:
        refusal = Refusal(status=status, code=code, message=message)
        self._closing = True
        self._write(_refusal(refusal), keep_alive=False)

    def _next(self) -> None:
        """Parse and start the next complete request in the buffer, if there is one."""
        if self._closing:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._fail(431, "HEADERS_TOO_LARGE", "request head is too large")
            return
        if end > MAX_HEAD_BYTES:
            self._fail(431, "HEADERS_TOO_LARGE", "request head is too large")
            return
        head = bytes(self._buffer[:end])
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            self._fail(400, "BAD_REQUEST", "malformed request line")
            return
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self._fail(505, "HTTP_VERSION", "HTTP/1.1 required")
            return
        if len(lines) - 1 > MAX_HEADERS:
            self._fail(431, "HEADERS_TOO_LARGE", "too many headers")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._fail(400, "BAD_REQUEST", "malformed header line")
                return
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "transfer-encoding" in headers:
            self._fail(411, "LENGTH_REQUIRED", "send the body with a Content-Length")
            return
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._fail(400, "BAD_REQUEST", "invalid Content-Length")
            return
        length = int(length_text)
        if length > self._frontend.config.limits.max_message_bytes:
            self._fail(413, "PAYLOAD_TOO_LARGE", "request body is too large")
            return
        start = end + 4
        if len(self._buffer) < start + length:
            return
        body = bytes(self._buffer[start : start + length])
        del self._buffer[: start + length]
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        self._busy = True
        if self._idle is not None:
            self._idle.cancel()
        self._transport.pause_reading()
        self._frontend.spawn(self._respond(method, target, headers, body, keep_alive))

    async def _respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes, keep_alive: bool
    ) -> None:
        try:
            response = await self._frontend.handle_http(method, target, headers, body, self._remote)
        except Exception:
            logger.exception("http request failed path=%s", redact_target(target))
            response = _refusal(
                Refusal(status=500, code="INTERNAL_ERROR", message="internal server error")
            )
        if self._transport.is_closing():
            return
        keep_alive = keep_alive and not self._closing and not self._frontend.closing
        self._write(response, keep_alive=keep_alive)
        self._busy = False
        if keep_alive:
            self._arm_idle()
            self._transport.resume_reading()
            self._next()

    def _write(self, response: HttpResponse, *, keep_alive: bool) -> None:
        status = http.HTTPStatus(response.status)
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            f"Server: gateway/{__version__}",
            f"Content-Length: {len(response.body)}",
        ]
        if response.body or response.status != 204:
            lines.append(f"Content-Type: {response.content_type}")
        origin = self._frontend.config.server.cors_allow_origin
        if origin:
            lines.append(f"Access-Control-Allow-Origin: {origin}")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        timeout = int(self._frontend.config.server.http_keepalive_timeout)
        lines.append(
            f"Connection: keep-alive\r\nKeep-Alive: timeout={timeout}"
            if keep_alive
            else "Connection: close"
        )
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._transport.write(head + response.body)
        if not keep_alive:
            self._closing = True
            self._close_after_answer()

    def _close_after_answer(self) -> None:
        """Lingering close: half-close, then discard input briefly before closing.

        Closing at once while request bytes are still unread makes the kernel send a reset,
        which can destroy the answer (a 413 or 431) before the client reads it.
        """
        self._buffer.clear()
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self._transport.write_eof()
        self._lingering = True
        self._transport.resume_reading()
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._transport.close)


# ---------------------------------------------------------------------------------------------
# Request handling


async def handle_http_request(
    frontend: Frontend,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    remote: str | None,
) -> HttpResponse:
    if method == "OPTIONS":
        allow_headers = headers.get("access-control-request-headers", "content-type")
        return HttpResponse(
            204,
            headers=[
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", allow_headers),
                ("Access-Control-Max-Age", "86400"),
            ],
        )
    if method != "POST":
        return _refusal(
            Refusal(
                status=405,
                code="METHOD_NOT_ALLOWED",
                message=f"{method} is not supported",
                headers=(("Allow", "GET, POST, OPTIONS"),),
            )
        )
    limits = frontend.config.limits
    parsed = parse_target(
        target,
        max_store_id_length=limits.max_store_id_length,
        max_payload_bytes=limits.max_payload_bytes,
    )
    if isinstance(parsed, NotSync):
        return _refusal(Refusal(status=404, code="NOT_FOUND", message="no such endpoint"))
    if isinstance(parsed, Refusal):
        return _refusal(parsed)
    if parsed.transport != "http":
        return _refusal(
            Refusal(status=400, code="BAD_TRANSPORT", message="POST requests use transport=http")
        )
    decision = await frontend.validate_payload(
        PayloadContext(
            store_id=parsed.store_id,
            payload=parsed.payload,
            transport="http",
            headers=headers,
            remote_addr=remote,
            query_token=parsed.query_token,
        )
    )
    if isinstance(decision, Refusal):
        logger.info(
            "refused http store=%s path=%s code=%s remote=%s",
            parsed.store_id,
            redact_target(target),
            decision.code,
            remote,
        )
        return _refusal(decision)
    try:
        message = protocol.decode_frame(body)
    except FrameError as exc:
        return _refusal(Refusal(status=400, code="BAD_REQUEST", message=str(exc)))
    if not isinstance(message, Request):
        return _refusal(
            Refusal(status=400, code="BAD_REQUEST", message="the body must be one Request")
        )
    frames = await _run_rpc(frontend, parsed.store_id, message, decision)
    return HttpResponse(200, b"[" + b",".join(frames) + b"]")


async def _run_rpc(
    frontend: Frontend, store_id: str, request: Request, admission: Admission
) -> list[bytes]:
    engine = frontend.engine
    rid = protocol.request_id_json(request.id)
    try:
        if request.tag == protocol.TAG_HTTP_PING:
            return [protocol.exit_success(rid, protocol.HTTP_PONG)]
        if request.tag == protocol.TAG_HTTP_PUSH:
            push = protocol.decode_push(request.payload)
            if push.store_id != store_id:
                return [protocol.exit_fail(rid, protocol.store_mismatch(push.store_id))]
            if push.batch:
                await frontend.push_gate(admission)
            started = time.perf_counter()
            error = await engine.push(push)
            engine.metrics.push_latency.observe(time.perf_counter() - started)
            if error is None:
                return [protocol.exit_success(rid, protocol.PUSH_ACK)]
            return [protocol.exit_fail(rid, error)]
        if request.tag == protocol.TAG_HTTP_PULL:
            pull = protocol.decode_pull(request.payload, http=True)
            if pull.store_id != store_id:
                return [protocol.exit_fail(rid, protocol.store_mismatch(pull.store_id))]
            opened = await engine.open_pull(pull)
            if isinstance(opened, dict):
                return [protocol.exit_fail(rid, opened)]
            prefix = protocol.chunk_prefix(rid)
            frames = [
                prefix + protocol.chunk_tail(item) async for item in engine.backlog_items(opened)
            ]
            frames.append(protocol.exit_success_void(rid))
            return frames
    except PayloadError as exc:
        return [protocol.exit_die(rid, str(exc))]
    except StoreError as exc:
        logger.error("http request failed store=%s: %s", store_id, exc)
        return [protocol.exit_fail(rid, protocol.unknown_error("storage unavailable", "http"))]
    return [protocol.exit_die(rid, f"Unknown request tag: {request.tag}")]
