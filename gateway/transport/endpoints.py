"""The plain endpoints: ``GET /``, ``/healthz``, ``/readyz``, ``/metrics`` and ``/stats``.

They answer requests without sync parameters on the WebSocket path (a ``GET`` without
``Upgrade``). ``/stats`` is for operators: the bypass token as a Bearer token, or a loopback
client when no bypass token is configured.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping

import orjson

from gateway import metrics
from gateway.config import LiveConfig
from gateway.errors import Refusal, RefusalCode
from gateway.transport.answer import JSON, TEXT, Answer

INFO_TEXT = "Info: gateway sync endpoint for @livestore/sync-cf 0.4.0 clients.\n"
LOOPBACK = frozenset({"127.0.0.1", "::1"})

ReadyCheck = Callable[[], Awaitable[bool]]


class Endpoints:
    """Answers the plain GET endpoints from what the composition root hands in."""

    def __init__(
        self,
        settings: LiveConfig,
        *,
        ready: ReadyCheck,
        closing: Callable[[], bool],
        render_metrics: Callable[[], bytes],
        stats: Callable[[], dict[str, object]],
    ) -> None:
        self._settings = settings
        self._ready = ready
        self._closing = closing
        self._render_metrics = render_metrics
        self._stats = stats

    async def answer(self, path: str, headers: Mapping[str, str], remote: str | None) -> Answer:
        """The answer to ``GET path``; 404 ``NOT_FOUND`` for any other path."""
        if path == "/healthz":
            return Answer(200, b"ok\n", TEXT)
        if path == "/readyz":
            if not self._closing() and await self._ready():
                return Answer(200, b"ready\n", TEXT)
            return Answer.refusal(
                Refusal(code=RefusalCode.NOT_READY, message="the store is not reachable")
            )
        if path == "/stats":
            if not self._operator(headers, remote):
                return Answer.refusal(
                    Refusal(
                        code=RefusalCode.FORBIDDEN,
                        message="/stats needs Authorization: Bearer <bypass token>",
                    )
                )
            return Answer(200, orjson.dumps(self._stats()), JSON)
        if path == "/metrics" and self._settings.current.metrics.enabled:
            return Answer(200, self._render_metrics(), metrics.CONTENT_TYPE)
        if path == "/":
            return Answer(200, INFO_TEXT.encode(), TEXT)
        return Answer.refusal(Refusal(code=RefusalCode.NOT_FOUND, message="no such endpoint"))

    def _operator(self, headers: Mapping[str, str], remote: str | None) -> bool:
        """The bypass token as a Bearer token, or a loopback client when there is none."""
        token = self._settings.current.auth.bypass_token
        if not token:
            host = remote.rsplit(":", 1)[0].strip("[]") if remote else ""
            return host in LOOPBACK
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(value.strip().encode()).digest(),
            hashlib.sha256(token.encode()).digest(),
        )
