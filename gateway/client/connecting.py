"""Making a :class:`~gateway.client.store.StoreClient`: :func:`connect` checks the options,
picks the transport's session opener and builds the client."""

from __future__ import annotations

import functools
import secrets
import ssl as ssl_module
from typing import Literal

from gateway.client.backoff import Backoff
from gateway.client.connection import Connection, Opener
from gateway.client.http import POLL_INTERVAL, HttpSession
from gateway.client.model import Stats
from gateway.client.store import StoreClient, TokenProvider


def connect(
    url: str,
    store_id: str,
    *,
    bypass_token: str | None = None,
    auth_token: str | None = None,
    token_provider: TokenProvider | None = None,
    instance_id: str = "python-client",
    client_id: str | None = None,
    session_id: str | None = None,
    backoff_base: float = 1.0,
    backoff_cap: float = 30.0,
    transport: Literal["ws", "http"] = "ws",
    poll_interval: float = POLL_INTERVAL,
    ssl: ssl_module.SSLContext | None = None,
    ping_interval: float | None = 30.0,
    ping_timeout: float = 10.0,
    push_window: int = 1,
) -> StoreClient:
    """A client of one store; use it as ``async with connect(...) as store:``.

    Credentials: one of ``bypass_token`` (internal services), ``auth_token`` (a fixed JWT)
    or ``token_provider`` (a JWT that is refreshed).

    Args:
        url: The server's base URL (``ws://host:port``, ``wss://…``, ``http(s)://…``).
        store_id: The store.
        bypass_token: The server bypass token (internal services).
        auth_token: A JWT (instead of the bypass token).
        token_provider: A callable returning a JWT (``str``) or an awaitable of one. It is
            called before every connect and reconnect (either transport), and its token is
            sent as the sync payload's ``authToken``. A session the server closes with 4001
            (token expired; over HTTP, a request answered 401 ``TOKEN_EXPIRED``) reconnects
            with the provider's next token; a handshake (over HTTP, the first request)
            refused with 401 or 403 calls the provider once more and tries once more, then
            raises :class:`Refused`. Whatever the provider raises propagates to the call that
            was connecting (an ``events()`` iteration, a commit). Without a provider, a
            401/403 is raised at once and a 4001 close raises :class:`ConnectionClosed` (over
            HTTP, the 401 raises :class:`Refused`).
        instance_id: Names this process in the server's logs and metrics.
        client_id: The clientId of the events this client commits (default: random).
        session_id: Their sessionId (default: random).
        backoff_base: The first reconnect delay in seconds; it doubles on each failure.
        backoff_cap: The longest reconnect delay.
        transport: ``"ws"`` (a WebSocket) or ``"http"`` (one POST per request; a live
            ``events()`` polls, see :mod:`gateway.client.http`).
        poll_interval: Over HTTP, the wait between two pulls of a live ``events()`` at the
            head: the latency of new events, and one request per interval while idle.
        ssl: The TLS context for ``wss://`` / ``https://`` (default: the system's CAs).
        ping_interval: Over a WebSocket, seconds between keepalive Pings on a session (idle
            or not); None sends none. Ignored over HTTP, where every request has its own
            deadline.
        ping_timeout: When no frame arrives within this many seconds of a Ping, the
            session is dropped as lost: the client reconnects with backoff and streams and
            pending commits carry on from where they were.
        push_window: The most pushes in flight at once. 1 (the default, as LiveStore's own
            client) sends a push when the one before it is answered; the events committed
            meanwhile go together in the next push (up to 100). More pipelines full pushes
            (100 events), which is faster for a store this client writes alone. With other
            writers it is a trade: when another writer lands exactly as many events as a
            refused push held, the push after it is accepted first, and some of this
            client's events end up after events it committed later (nothing is lost or
            written twice; ``stats.reordered`` counts them, and a warning is logged). The
            protocol has no way to prevent that (see :mod:`gateway.client.writer`).

    Returns:
        The client; entering it opens the session.

    Raises:
        ValueError: ``token_provider`` together with ``auth_token`` or ``bypass_token``; a
            URL with a query string or an unknown scheme; ``transport`` neither ``"ws"`` nor
            ``"http"``; a ping interval or timeout that is not positive; a push window
            under 1.
    """
    if ping_interval is not None and ping_interval <= 0:
        raise ValueError("ping_interval must be positive (None disables the keepalive)")
    if ping_timeout <= 0:
        raise ValueError("ping_timeout must be positive")
    if token_provider is not None and (auth_token is not None or bypass_token is not None):
        raise ValueError("token_provider excludes auth_token and bypass_token")
    stats = Stats()
    opener: Opener
    if transport == "http":
        opener = HttpSession.opener(store_id, ssl=ssl, poll_interval=poll_interval)
    elif transport == "ws":
        opener = functools.partial(
            Connection.open,
            ssl=ssl,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            stats=stats,
        )
    else:
        raise ValueError(f'transport must be "ws" or "http", not {transport!r}')
    # The sync URL is built on each connect (a provider's token); the client's first one
    # checks the URL now.
    return StoreClient(
        url,
        store_id,
        client_id=client_id or f"py-{secrets.token_urlsafe(6)}",
        session_id=session_id or secrets.token_urlsafe(6),
        backoff=Backoff(backoff_base, backoff_cap),
        opener=opener,
        transport=transport,
        instance_id=instance_id,
        bypass_token=bypass_token,
        auth_token=auth_token,
        token_provider=token_provider,
        push_window=push_window,
        stats=stats,
    )
