"""gateway.transport.http1 and gateway.transport.upgrade: request heads and the 101, pure."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.errors import Refusal, RefusalCode
from gateway.transport import http1, upgrade

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
UPGRADE = {
    "host": "x",
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-key": KEY,
    "sec-websocket-version": "13",
}


def refused(result: object, code: RefusalCode) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.code == code, result
    return result


class TestParseHead:
    def test_request(self) -> None:
        head = http1.parse_head(
            b"GET /sync?storeId=s HTTP/1.1\r\nHost: x\r\nX-A:  one \r\nx-a: two\r\nEmpty:"
        )
        assert head == http1.Head(
            "GET", "/sync?storeId=s", "HTTP/1.1", {"host": "x", "x-a": "one, two", "empty": ""}
        )

    def test_no_headers_and_obs_text(self) -> None:
        head = http1.parse_head(b"POST / HTTP/1.0")
        assert head == http1.Head("POST", "/", "HTTP/1.0", {})
        latin = http1.parse_head(b"GET / HTTP/1.1\r\nX-Name: caf\xe9\tau lait")
        assert isinstance(latin, http1.Head)
        assert latin.headers["x-name"] == "caf\xe9\tau lait"

    @pytest.mark.parametrize(
        ("head", "code"),
        [
            (b"GET / HTTP/1.1 extra", RefusalCode.BAD_REQUEST),
            (b"GET /", RefusalCode.BAD_REQUEST),
            (b"G(T / HTTP/1.1", RefusalCode.BAD_REQUEST),
            (b"GET /a\x01 HTTP/1.1", RefusalCode.BAD_REQUEST),
            (b"GET /\xe9 HTTP/1.1", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/2.0", RefusalCode.HTTP_VERSION),
            (b"GET / HTTP/1.1\r\nno colon", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/1.1\r\n: empty name", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nX :space before colon", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/1.1\r\n folded: line", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nX: a\rb", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nX: a\nY: b", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/1.1\r\nX: a\x7f", RefusalCode.BAD_REQUEST),
            (b"GET / HTTP/1.1" + b"\r\nX: v" * 101, RefusalCode.HEADERS_TOO_LARGE),
            (b"GET / HTTP/1.1\r\nX: " + b"v" * 40_000, RefusalCode.HEADERS_TOO_LARGE),
        ],
    )
    def test_refused(self, head: bytes, code: RefusalCode) -> None:
        refused(http1.parse_head(head), code)

    def test_the_request_line_cap_is_the_callers(self) -> None:
        line = b"GET /" + b"a" * 9000 + b" HTTP/1.1"
        assert isinstance(http1.parse_head(line), http1.Head)
        refused(http1.parse_head(line, max_request_line=8192), RefusalCode.URI_TOO_LONG)

    def test_a_hundred_headers_are_fine(self) -> None:
        head = http1.parse_head(b"GET / HTTP/1.1" + b"\r\nX: v" * 100)
        assert isinstance(head, http1.Head)
        assert head.headers["x"] == ", ".join(["v"] * 100)


class TestUnfinished:
    def test_growing_heads_wait(self) -> None:
        assert http1.unfinished(b"GET / HTTP/1.1\r\nHost") is None
        assert http1.unfinished(b"G" * 9000, max_request_line=None) is None

    def test_caps(self) -> None:
        refused(http1.unfinished(b"G" * 9000, max_request_line=8192), RefusalCode.URI_TOO_LONG)
        long_header = b"GET / HTTP/1.1\r\nX: " + b"v" * 40_000
        refused(http1.unfinished(long_header, max_request_line=8192), RefusalCode.HEADERS_TOO_LARGE)
        refused(http1.unfinished(b"G" * 40_000), RefusalCode.HEADERS_TOO_LARGE)

    def test_head_end(self) -> None:
        data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nframes"
        end = http1.head_end(data)
        assert data[:end] == b"GET / HTTP/1.1\r\nHost: x"
        assert data[http1.body_start(end) :] == b"frames"
        assert http1.head_end(b"GET / HTTP/1.1\r\n") == -1


def test_has_token() -> None:
    assert http1.has_token("keep-alive, Upgrade", "upgrade")
    assert http1.has_token("WebSocket", "websocket")
    assert not http1.has_token("upgrade-ish", "upgrade")
    assert not http1.has_token("", "upgrade")


class TestSwitchingProtocols:
    def head(
        self, changes: dict[str, str | None] | None = None, version: str = "HTTP/1.1"
    ) -> http1.Head:
        merged = {**UPGRADE, **(changes or {})}
        headers = {k: v for k, v in merged.items() if v is not None}
        return http1.Head("GET", "/", version, headers)

    def test_accept(self) -> None:
        response = upgrade.switching_protocols(self.head(), "gateway/test")
        assert response == (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Server: gateway/test\r\n\r\n"
        )

    def test_accept_value_matches_the_rfc(self) -> None:
        guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        expected = base64.b64encode(hashlib.sha1(KEY.encode() + guid).digest()).decode()  # noqa: S324
        assert upgrade.accept_value(KEY) == expected == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    def test_offers_are_ignored(self) -> None:
        head = self.head(
            {
                "sec-websocket-extensions": "permessage-deflate",
                "sec-websocket-protocol": "chat",
                "connection": "keep-alive, Upgrade",
                "upgrade": "WebSocket",
            }
        )
        response = upgrade.switching_protocols(head, "g")
        assert isinstance(response, bytes)
        assert b"Extensions" not in response
        assert b"Protocol:" not in response

    @pytest.mark.parametrize(
        ("changes", "code"),
        [
            ({"connection": None}, RefusalCode.UPGRADE_REQUIRED),
            ({"connection": "keep-alive"}, RefusalCode.UPGRADE_REQUIRED),
            ({"upgrade": "h2c"}, RefusalCode.UPGRADE_REQUIRED),
            ({"sec-websocket-version": None}, RefusalCode.UPGRADE_REQUIRED),
            ({"sec-websocket-version": "8"}, RefusalCode.UPGRADE_REQUIRED),
            ({"sec-websocket-key": None}, RefusalCode.BAD_REQUEST),
            ({"sec-websocket-key": "short"}, RefusalCode.BAD_REQUEST),
            ({"sec-websocket-key": "not base64 at all!!!!!!!"}, RefusalCode.BAD_REQUEST),
            ({"sec-websocket-key": f"{KEY}, {KEY}"}, RefusalCode.BAD_REQUEST),
        ],
    )
    def test_refused(self, changes: dict[str, str | None], code: RefusalCode) -> None:
        refusal = refused(upgrade.switching_protocols(self.head(changes), "g"), code)
        if code is RefusalCode.UPGRADE_REQUIRED:
            assert ("Upgrade", "websocket") in refusal.headers

    def test_version_refusal_names_the_version(self) -> None:
        refusal = refused(
            upgrade.switching_protocols(self.head({"sec-websocket-version": "8"}), "g"),
            RefusalCode.UPGRADE_REQUIRED,
        )
        assert ("Sec-WebSocket-Version", "13") in refusal.headers

    def test_http_10(self) -> None:
        refused(
            upgrade.switching_protocols(self.head(version="HTTP/1.0"), "g"),
            RefusalCode.HTTP_VERSION,
        )
