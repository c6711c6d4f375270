"""The HTTP transport (spec §10) from the client's side: the stdlib client in a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.exceptions import InvalidStatus

from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import HTTP_PUSH, NONE, request_frame, some


@dataclass(frozen=True, slots=True)
class HttpResult:
    """One HTTP exchange: status, headers (lower-cased names), raw body and its JSON if any."""

    status: int
    headers: dict[str, str]
    raw: bytes
    body: Any

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


_NOT_JSON = object()


def _http_exchange(
    method: str, url: str, body: bytes | None, headers: dict[str, str], within: float
) -> HttpResult:
    parts = urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=within)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        names = {name.lower(): value for name, value in response.getheaders()}
        try:
            parsed = orjson.loads(raw) if raw else _NOT_JSON
        except orjson.JSONDecodeError:
            parsed = _NOT_JSON
        text_or_json = raw.decode(errors="replace") if parsed is _NOT_JSON else parsed
        return HttpResult(response.status, names, raw, text_or_json)
    finally:
        conn.close()


def _http_keepalive(
    url: str, bodies: list[bytes], headers: dict[str, str], within: float
) -> list[HttpResult]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=within)
    results = []
    try:
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        for body in bodies:
            conn.request("POST", target, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            names = {name.lower(): value for name, value in response.getheaders()}
            results.append(HttpResult(response.status, names, raw, orjson.loads(raw)))
    finally:
        conn.close()
    return results


async def http_keepalive_posts(
    url: str, objs: list[Any], *, within: float = 10 * TIMEOUT_UNIT
) -> list[HttpResult]:
    """POST each of ``objs`` as JSON over ONE keep-alive connection, like ``fetch`` does."""
    bodies = [orjson.dumps(obj) for obj in objs]
    headers = {"content-type": "application/json"}
    return await asyncio.to_thread(_http_keepalive, url, bodies, headers, within)


async def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    within: float = 10 * TIMEOUT_UNIT,
) -> HttpResult:
    """One HTTP request with the stdlib client, run in a worker thread."""
    return await asyncio.to_thread(_http_exchange, method, url, body, dict(headers or {}), within)


async def http_post_json(
    url: str, obj: Any, *, headers: dict[str, str] | None = None
) -> HttpResult:
    """POST ``obj`` as JSON, the way ``makeHttpSync`` does (spec §10.1)."""
    all_headers = {"content-type": "application/json"}
    all_headers.update(headers or {})
    return await http_request("POST", url, body=orjson.dumps(obj), headers=all_headers)


async def http_rpc(url: str, tag: str, payload: Any, rid: str = "0") -> HttpResult:
    """POST one RPC ``Request`` and assert the transport-level answer: 200, JSON, an array."""
    result = await http_post_json(url, request_frame(rid, tag, payload))
    assert result.status == 200, f"HTTP {result.status}: {result.raw[:500]!r}"
    assert result.content_type == "application/json", result.headers
    assert isinstance(result.body, list), f"HTTP RPC body must be a JSON array: {result.body!r}"
    return result


async def http_push(
    url: str,
    store_id: str,
    batch: list[dict[str, Any]],
    backend_id: str | None = None,
    *,
    rid: str = "3",
) -> dict[str, Any]:
    """An HTTP push: assert the answer is exactly one Exit for the request; return it."""
    payload = {
        "storeId": store_id,
        "batch": batch,
        "backendId": NONE if backend_id is None else some(backend_id),
    }
    result = await http_rpc(url, HTTP_PUSH, payload, rid)
    assert len(result.body) == 1, result.body
    (frame,) = result.body
    assert frame.get("_tag") == "Exit", frame
    assert frame.get("requestId") == rid, frame
    return frame  # type: ignore[no-any-return]


def assert_transient_body(result: HttpResult, status: int, code: str) -> None:
    """A transient 5xx of the HTTP transport: a text body ``CODE: message`` (LiveStore's HTTP
    clients retry a body they cannot parse, and stop on JSON they do not expect)."""
    assert result.status == status, f"expected {status}, got {result.status}: {result.raw[:300]!r}"
    assert result.headers.get("content-type", "").startswith("text/plain"), result.headers
    assert result.raw.decode().startswith(f"{code}: "), result.raw[:300]
    assert result.headers.get("retry-after") == "1", result.headers


def assert_error_body(result: HttpResult, status: int, code: str) -> None:
    """A refused request: the given 4xx and the JSON body ``{"error":{"code","message"}}``."""
    assert result.status == status, f"expected {status}, got {result.status}: {result.raw[:300]!r}"
    assert isinstance(result.body, dict), f"error body must be JSON: {result.raw[:300]!r}"
    error = result.body.get("error")
    assert isinstance(error, dict), result.body
    assert error.get("code") == code, result.body
    assert isinstance(error.get("message"), str), result.body
    assert error["message"], result.body


def parse_response(received: bytes) -> HttpResult:
    """One raw HTTP/1.1 response (head and body, as read until the server closed)."""
    head, sep, raw = received.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {received[:300]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    names = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        names[name.strip().lower()] = value.strip()
    try:
        body: Any = orjson.loads(raw) if raw else raw.decode()
    except orjson.JSONDecodeError:
        body = raw.decode(errors="replace")
    return HttpResult(int(status), names, raw, body)


async def raw_http_exchange(
    address: str, request: bytes, *, body: bytes = b"", within: float = 10 * TIMEOUT_UNIT
) -> HttpResult:
    """Send ``request`` (a raw head, maybe with a body) and then ``body`` to ``address``
    (``host:port``) over one TCP connection, and read the answer until the server closes.

    ``body`` is written by a task of its own while the answer is read, so a server that
    answers before reading the whole body is seen doing so (and a reset shows up as an error).
    """
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    sending: asyncio.Task[None] | None = None
    try:
        writer.write(request)
        await writer.drain()

        async def send_body() -> None:
            writer.write(body)
            await writer.drain()

        if body:
            sending = asyncio.create_task(send_body())
        async with asyncio.timeout(within):
            received = await reader.read()
    finally:
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sending
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse_response(received)


def refusal_of(exc: InvalidStatus) -> HttpResult:
    """The HTTP answer of a refused WebSocket upgrade."""
    response = exc.response
    raw = bytes(response.body or b"")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = raw.decode(errors="replace")
    headers = {name.lower(): value for name, value in response.headers.raw_items()}
    return HttpResult(response.status_code, headers, raw, body)
