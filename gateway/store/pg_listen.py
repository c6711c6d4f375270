"""The PostgreSQL backend's listening connection: every node hears every node's commits.

A mixin of :class:`gateway.store.postgres.PostgresStore`. One connection LISTENs on the
store's channel; a notification names a store and its new head (``{"s", "h"}``; a group
commit's lists them all: ``{"c": [[s, h], ...]}``), or a reset
or delete (``{"s", "x", "n"}``, ``n`` the announcing node, which acts on its own change
directly). The connection is watched: when it drops the node retries with backoff, reports
not-ready meanwhile, and reconciles every loaded store once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

logger = logging.getLogger("gateway.store.postgres")

CommitListener = Callable[[str, int], None]


class PostgresListener:
    """Listening for other nodes' announcements (the store provides the attributes)."""

    channel: str
    node: str
    _closed: bool
    _listener: asyncpg.Connection | None
    _listening: asyncio.Event
    _on_commit: CommitListener | None
    _on_reconnect: Callable[[], None] | None
    _on_retired: Callable[[str, str], None] | None
    _on_revoked: Callable[[], None] | None = None

    _on_disconnect: Callable[[dict[str, str]], None] | None = None
    _on_commits: Callable[[list[tuple[str, int]]], None] | None = None

    def set_group_commit_listener(
        self, on_commits: Callable[[list[tuple[str, int]]], None]
    ) -> None:
        """``on_commits([(store_id, head), ...])`` for a group's announcement, instead of one
        ``on_commit`` per store (so a node can read the group's events in one query)."""
        self._on_commits = on_commits

    def set_revocation_listener(self, on_revoked: Callable[[], None]) -> None:
        """``on_revoked()`` when another node recorded a revocation."""
        self._on_revoked = on_revoked

    def set_disconnect_listener(self, on_disconnect: Callable[[dict[str, str]], None]) -> None:
        """``on_disconnect(filters)`` when an operator disconnected sessions on another node."""
        self._on_disconnect = on_disconnect

    async def _connect(self) -> asyncpg.Connection:
        raise NotImplementedError

    def set_commit_listener(
        self,
        on_commit: CommitListener,
        on_reconnect: Callable[[], None],
        on_retired: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_commit(store_id, head)`` for every announced commit (any node, this one too);
        ``on_reconnect()`` after the listening connection came back (notifications may have
        been lost meanwhile); ``on_retired(store_id, what)`` for a reset or delete made by
        another node."""
        self._on_commit = on_commit
        self._on_reconnect = on_reconnect
        self._on_retired = on_retired

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            message = orjson.loads(payload)  # type: ignore[arg-type]
            if "c" in message:  # a group's commits: [[store_id, head], ...]
                commits = [(str(s), int(h)) for s, h in message["c"]]
                if self._on_commits is not None:
                    self._on_commits(commits)
                elif self._on_commit is not None:
                    for store_id, head in commits:
                        self._on_commit(store_id, head)
                return
            store_id = message["s"]
            if "x" in message:
                what, node = str(message["x"]), message.get("n")
            else:
                head = int(message["h"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed notification")
            return
        if "x" in message:
            if node == self.node:
                return  # this node acted on its own change already
            if what == "revoke":
                if self._on_revoked is not None:
                    self._on_revoked()
            elif what == "disconnect":
                filters = message.get("f")
                if isinstance(filters, dict) and self._on_disconnect is not None:
                    self._on_disconnect({str(k): str(v) for k, v in filters.items()})
            elif self._on_retired is not None:
                self._on_retired(store_id, what)
        elif self._on_commit is not None:
            self._on_commit(store_id, head)

    async def _listen_forever(self) -> None:
        delay = 0.1
        first = True
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._notified)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                logger.warning("postgres listener: cannot connect (%s); retrying", exc)
                await asyncio.sleep(delay * (1 + random.random()))  # noqa: S311 - jitter
                delay = min(delay * 2, 10.0)
                continue
            self._listener = conn
            self._listening.set()
            delay = 0.1
            if not first:
                logger.info("postgres listener reconnected; reconciling stores")
            if not first and self._on_reconnect is not None:
                self._on_reconnect()
            first = False
            try:
                await lost.wait()
            finally:
                self._listening.clear()
                self._listener = None
                with contextlib.suppress(Exception):
                    conn.terminate()
            logger.warning("postgres listener connection lost")
