"""Keeping this node's revocations in force: the auth gate's set follows the store's list.

A revocation recorded here goes to the store (durable, for every node) and into the gate at
once, and the open sessions are re-checked (those it covers close with 4003). Another node's
revocation arrives through the store's announcement, or, if that was lost, through the
periodic :meth:`Revocations.reload` (shared backends); either way the gate takes the store's
list and the sessions are re-checked when it changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.errors import StoreError
from gateway.revocation import Revocation, RevocationSet
from gateway.store import EventStore

logger = logging.getLogger("gateway.admin")

Recheck = Callable[[], Awaitable[int]]
"""Re-checks every open session against the gate; how many it closed."""


class Revocations:
    """The glue between the store's revocations, the auth gate's set and the open sessions."""

    def __init__(self, store: EventStore, revoked: RevocationSet, recheck: Recheck) -> None:
        self._store = store
        self._revoked = revoked
        self._recheck = recheck

    async def load(self) -> None:
        """Take the store's list (at start, before any session)."""
        self._revoked.replace(await self._store.list_revocations(time.time()))

    async def revoke(self, entry: Revocation) -> int:
        """Record ``entry`` and close the sessions it covers (4003); how many were closed."""
        await self._store.add_revocation(entry)
        self._revoked.add(entry)
        return await self._recheck()

    async def reload(self) -> int:
        """Take the store's list if it changed (another node recorded one); close what it
        covers now."""
        try:
            entries = await self._store.list_revocations(time.time())
        except StoreError as exc:
            logger.warning("cannot read the revocations: %s", exc)
            return 0
        if set(entries) == set(self._revoked):
            return 0
        self._revoked.replace(entries)
        return await self._recheck()

    async def reload_forever(self, interval: Callable[[], float]) -> None:
        """Revocations whose announcement was lost (shared backends) arrive this way."""
        while True:
            await asyncio.sleep(interval())
            await self.reload()
