"""The server side of the WebSocket opening handshake (RFC 6455 §4.2), pure.

An admitted request's head in; the bytes of its ``101 Switching Protocols`` out, or the
refusal a request that is not a valid upgrade earns. websockets' ``ServerProtocol`` then
takes the open connection over (it is created in the OPEN state): parsing the head and writing
the 101 here, in one pass and one format string, costs a fifth of what its handshake layer
(a generator-driven parser, a header multidict, a ``Response`` object) did per connection,
and a reconnect storm is nothing but handshakes.

No extension and no subprotocol is ever negotiated, as before: offers are ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from gateway.errors import Refusal, RefusalCode
from gateway.transport.http1 import Head, has_token

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_NOT_AN_UPGRADE = Refusal(
    code=RefusalCode.UPGRADE_REQUIRED,
    message="expected Connection: Upgrade and Upgrade: websocket",
    headers=(("Upgrade", "websocket"),),
)
_VERSION = Refusal(
    code=RefusalCode.UPGRADE_REQUIRED,
    message="Sec-WebSocket-Version 13 is required",
    headers=(("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")),
)
_BAD_KEY = Refusal(code=RefusalCode.BAD_REQUEST, message="invalid Sec-WebSocket-Key")
_HTTP_10 = Refusal(code=RefusalCode.HTTP_VERSION, message="WebSocket upgrades need HTTP/1.1")


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()  # noqa: S324


def _key_valid(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def switching_protocols(head: Head, server: str) -> bytes | Refusal:
    """The 101 answering ``head``, or why it is not a WebSocket upgrade we can accept."""
    headers = head.headers
    if head.version != "HTTP/1.1":
        return _HTTP_10
    if not has_token(headers.get("connection", ""), "upgrade"):
        return _NOT_AN_UPGRADE
    if not has_token(headers.get("upgrade", ""), "websocket"):
        return _NOT_AN_UPGRADE
    if headers.get("sec-websocket-version") != "13":
        return _VERSION
    key = headers.get("sec-websocket-key")
    # A repeated header comes joined with ", ", which no valid key contains.
    if key is None or not _key_valid(key):
        return _BAD_KEY
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_value(key)}\r\n"
        f"Server: {server}\r\n\r\n"
    ).encode()
