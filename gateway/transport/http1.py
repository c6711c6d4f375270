"""HTTP/1.1 request heads, pure: bytes in, the parsed head or the refusal to answer with.

Both transports read their requests with it: the WebSocket upgrade (a ``GET``, then
:mod:`gateway.transport.upgrade`) and the HTTP transport (``POST``, ``OPTIONS``). A head is
at most 32 KiB and 100 header lines (431 ``HEADERS_TOO_LARGE``); the WebSocket path also caps
the request line at 8 KiB (414 ``URI_TOO_LONG``).

What is refused as malformed (400 ``BAD_REQUEST``): a request line that is not three fields
separated by single spaces or whose target holds anything but visible ASCII, a header name
that is not an RFC 9110 token (no space before the colon), control characters other than tab
in a value, and a bare CR or LF. A value is read without the spaces around it; a repeated
header's values are joined with ", " (RFC 9110 §5.3). Names come out lower-case.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from gateway.errors import Refusal, RefusalCode

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100

_END = b"\r\n\r\n"
_TARGET = re.compile(r"[\x21-\x7e]+")
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Every header line, each ending with CRLF: a token, a colon, then visible characters, spaces,
# tabs and obs-text (latin-1 decoding keeps bytes 0x80-0xFF as one character each).
_HEADER_BLOCK = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")

_TOO_LARGE = Refusal(code=RefusalCode.HEADERS_TOO_LARGE, message="request head is too large")
_TOO_MANY = Refusal(code=RefusalCode.HEADERS_TOO_LARGE, message="too many headers")
_URI_TOO_LONG = Refusal(code=RefusalCode.URI_TOO_LONG, message="request line is too long")
_BAD_LINE = Refusal(code=RefusalCode.BAD_REQUEST, message="malformed request line")
_BAD_HEADER = Refusal(code=RefusalCode.BAD_REQUEST, message="malformed header line")
_VERSION = Refusal(code=RefusalCode.HTTP_VERSION, message="HTTP/1.1 required")


class Head(NamedTuple):
    """A request's method, target, version and headers (lower-case names)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]


def has_token(value: str, token: str) -> bool:
    """Whether the comma-separated header ``value`` lists ``token`` (lower-case)."""
    value = value.lower()
    if value == token:  # the usual case: one token, no spaces
        return True
    return token in value and any(item.strip() == token for item in value.split(","))


def head_end(buffer: bytes | bytearray) -> int:
    """Where the head in ``buffer`` ends (the index of its blank line), or -1."""
    return buffer.find(_END)


def body_start(end: int) -> int:
    """The index of the first byte after the head that ends at ``end``."""
    return end + len(_END)


def unfinished(buffer: bytes | bytearray, *, max_request_line: int | None = None) -> Refusal | None:
    """For a buffer whose head has not ended: the refusal its size already earns, if any."""
    if (
        max_request_line is not None
        and len(buffer) > max_request_line
        and buffer.find(b"\r\n", 0, max_request_line + 2) < 0
    ):
        return _URI_TOO_LONG
    if len(buffer) > MAX_HEAD_BYTES:
        return _TOO_LARGE
    return None


def parse_head(head: bytes, *, max_request_line: int | None = None) -> Head | Refusal:
    """Parse a request head (everything before its blank line).

    ``max_request_line`` caps the request line alone (the WebSocket path: 8 KiB, what
    browsers and websockets allow); by default only the whole head is capped.
    """
    if len(head) > MAX_HEAD_BYTES:
        return _TOO_LARGE
    text = head.decode("latin-1")
    request_line, _, rest = text.partition("\r\n")
    if max_request_line is not None and len(request_line) > max_request_line:
        return _URI_TOO_LONG
    fields = request_line.split(" ")
    if len(fields) != 3:
        return _BAD_LINE
    method, target, version = fields
    if not _METHOD.fullmatch(method) or not _TARGET.fullmatch(target):
        return _BAD_LINE
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        return _VERSION
    headers: dict[str, str] = {}
    if not rest:
        return Head(method, target, version, headers)
    if rest.count("\r\n") >= MAX_HEADERS:
        return _TOO_MANY
    rest += "\r\n"
    if not _HEADER_BLOCK.fullmatch(rest):
        return _BAD_HEADER
    for line in rest.split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Head(method, target, version, headers)
