"""An HTTP answer as the endpoints and transports build it, before either writes it."""

from __future__ import annotations

import email.utils
import http
from collections.abc import Iterable
from dataclasses import dataclass

from gateway import __version__
from gateway.errors import Refusal

SERVER_HEADER = f"gateway/{__version__}"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Answer:
    """Status, body, content type and extra headers of one HTTP response."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def refusal(cls, refusal: Refusal) -> Answer:
        """The documented JSON error body, with the refusal's status and headers."""
        return cls(refusal.status, refusal.body(), JSON, refusal.headers)

    @classmethod
    def transient(cls, refusal: Refusal) -> Answer:
        """A 5xx for an HTTP-transport sync request: ``CODE: message`` as text, not JSON.

        LiveStore's HTTP clients read any JSON body as their RPC answer and stop syncing on
        one they do not expect, while a body they cannot parse is a transport error they
        retry: the same trouble must look like "offline", not like a verdict.
        """
        body = f"{refusal.code}: {refusal.message}\n".encode()
        return cls(refusal.status, body, TEXT, (*refusal.headers, ("Retry-After", "1")))


def encode(status: int, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """One HTTP/1.1 response: status line, ``headers`` in order, blank line, ``body``."""
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def closing(answer: Answer) -> bytes:
    """``answer`` as the last response of its connection (``Connection: close``)."""
    headers = (
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Server", SERVER_HEADER),
        ("Connection", "close"),
        ("Content-Length", str(len(answer.body))),
        ("Content-Type", answer.content_type),
        *answer.headers,
    )
    return encode(answer.status, headers, answer.body)
