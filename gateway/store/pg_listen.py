"""The PostgreSQL backend's listening connection: every node hears every node's commits.

A mixin of :class:`gateway.store.postgres.PostgresStore`. One connection LISTENs on the
store's channel; a notification announces a group commit: the stores written, their new
heads and, when they fit, their events (:mod:`gateway.store.pg_notice`; the previous
versions' ``{"c": [[s, h], ...]}`` and ``{"s", "h"}`` are understood too), or a reset or
delete (``{"s", "x", "n"}``). ``n`` names the announcing node, which acts on its own changes
and publishes its own pushes directly: it skips its own announcements (a commit's by the
payload's first bytes, unparsed). The connection is watched: when it drops the node
retries with backoff, reports not-ready meanwhile, and reconciles every loaded store once it
is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import asyncpg

from gateway.store.pg_notice import Carried, Commits, decode, own_prefix

logger = logging.getLogger("gateway.store.postgres")

CommitListener = Callable[[str, int], None]
GroupCommitListener = Callable[[list[tuple[str, int]], dict[str, Carried]], None]


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
    _on_own_change: Callable[[str], None] | None = None
    _on_commits: GroupCommitListener | None = None

    # How this node's own commit notifications begin (set when listening starts).
    _own_prefix: str = "\0"

    def set_group_commit_listener(self, on_commits: GroupCommitListener) -> None:
        """``on_commits([(store_id, head), ...], carried)`` for another node's group
        announcement, instead of one ``on_commit`` per store: ``carried`` holds the events
        of the stores whose events the announcement carries (they need no read), by store;
        the others' a node can read in one query."""
        self._on_commits = on_commits

    def set_own_change_listener(self, on_own_change: Callable[[str], None]) -> None:
        """``on_own_change(store_id)`` when this node hears its own reset or delete
        announced: every announcement committed before it has been heard by then."""
        self._on_own_change = on_own_change

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
        payload = str(payload)  # (asyncpg gives text)
        if payload.startswith(self._own_prefix):
            return  # this node's own group commit: its pushes publish their events themselves
        try:
            message = decode(payload)
            if isinstance(message, Commits):
                if self._on_commits is not None:
                    self._on_commits(message.heads, message.carried)
                elif self._on_commit is not None:
                    for store_id, head in message.heads:
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
                # This node acted on its own change already.
                if self._on_own_change is not None and what in ("reset", "delete"):
                    self._on_own_change(store_id)
                return
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
        self._own_prefix = own_prefix(self.node)
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
