"""The HTTP transport's request parsing: every malformed request gets its documented status
and code (README, "HTTP status codes"), and the answer reaches the client."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.helpers.harness import MakeGateway
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.urls import sync_query

TARGET = "/?" + sync_query("parsing", transport="http")

CASES = {
    "request-line": (f"POST {TARGET} HTTP/1.1 extra\r\n\r\n".encode(), 400, "BAD_REQUEST"),
    "http-version": (f"POST {TARGET} HTTP/2.0\r\n\r\n".encode(), 505, "HTTP_VERSION"),
    "header-line": (
        f"POST {TARGET} HTTP/1.1\r\nNo colon here\r\n\r\n".encode(),
        400,
        "BAD_REQUEST",
    ),
    "content-length": (
        f"POST {TARGET} HTTP/1.1\r\nContent-Length: -5\r\n\r\n".encode(),
        400,
        "BAD_REQUEST",
    ),
    "too-many-headers": (
        (
            f"POST {TARGET} HTTP/1.1\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(101)) + "\r\n"
        ).encode(),
        431,
        "HEADERS_TOO_LARGE",
    ),
    "head-too-large": (
        f"POST {TARGET} HTTP/1.1\r\nX-Big: {'a' * 40_000}\r\n\r\n".encode(),
        431,
        "HEADERS_TOO_LARGE",
    ),
    "head-never-ends": (
        f"POST {TARGET} HTTP/1.1\r\nX-Big: {'a' * 40_000}".encode(),
        431,
        "HEADERS_TOO_LARGE",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_malformed_request_gets_its_code(make_gateway: MakeGateway, name: str) -> None:
    """Each malformed request is answered with its status and JSON code, then closed."""
    request, status, code = CASES[name]
    gw = await make_gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5 * TIMEOUT_UNIT)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), head[:200]
    assert b"Connection: close" in head, head
    assert orjson.loads(body)["error"]["code"] == code
