"""Resetting and deleting a store while it is in use (the operator's actions, any node).

:meth:`StoreLifecycle.retire` runs the change to the log (a reset or a delete) with the
store's pushes held off and no load of the store in between, then drops what the node holds
of it and tells the composition root (``on_retired``), which closes the store's sessions so
their clients reconnect and learn the new backendId (``BackendIdMismatchError``: LiveStore
clients then reset themselves). A push already waiting for the store's lock when it was
retired is answered with that same error. On a shared backend the change is announced and
every other node retires its copy of the store the same way (:meth:`on_retired_elsewhere`).
:class:`~gateway.engine.SyncEngine` is a StoreLifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.follow import StoreState
from gateway.store import EventStore

logger = logging.getLogger("gateway.engine")

T = TypeVar("T")

RetiredHook = Callable[[str, str], None]
"""``on_retired(store_id, what)`` with ``what`` = ``"reset"`` or ``"delete"``."""


class StoreLifecycle:
    """A mixin of the sync engine: it owns the state this works on."""

    store: EventStore
    _states: dict[str, StoreState]
    _loading: dict[str, asyncio.Future[StoreState]]
    _retiring: dict[str, asyncio.Future[None]]
    shared: bool
    _fenced: set[str]
    on_retired: RetiredHook | None

    def _spawn(self, coro: Any) -> None:
        raise NotImplementedError

    async def _await_retiring(self, store_id: str) -> None:
        """Wait while ``store_id`` is being reset or deleted (a load would read it half-way)."""
        while (retiring := self._retiring.get(store_id)) is not None:
            await asyncio.shield(retiring)

    async def retire(
        self, store_id: str, what: str, change: Callable[[], Awaitable[T]] | None = None
    ) -> T | None:
        """Run ``change`` on ``store_id``'s log with its pushes held off, then drop the store.

        A push in flight finishes first (it holds the store's lock); pushes and loads that
        come meanwhile wait, then see the changed log. ``change`` None: another node made the
        change (the node only drops its copy).

        Returns:
            What ``change`` returned (None without one). ``on_retired`` is called unless it
            returned something false (no such store).
        """
        await self._await_retiring(store_id)
        if change is not None and self.shared and what in ("reset", "delete"):
            self._fenced.add(store_id)  # until its announcement comes back (gateway.follow)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._retiring[store_id] = done
        try:
            loading = self._loading.get(store_id)
            if loading is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(loading)
            state = self._states.get(store_id)
            result: T | None = None
            if state is None:
                if change is not None:
                    result = await change()
            else:
                # Pushes in flight (pipelined ones too) finish first; none is admitted while
                # the lock is held.
                await state.lock.acquire()
                while state.in_flight:
                    state.lock.release()
                    await state.settled()
                    await state.lock.acquire()
                try:
                    if change is not None:
                        result = await change()
                    state.retired = True
                    if self._states.get(store_id) is state:
                        del self._states[store_id]
                finally:
                    state.lock.release()
            self.store.forget(store_id)
        finally:
            del self._retiring[store_id]
            done.set_result(None)
        if self.on_retired is not None and (change is None or result):
            self.on_retired(store_id, what)
        return result

    def on_retired_elsewhere(self, store_id: str, what: str) -> None:
        """Another node reset or deleted ``store_id`` (a shared backend's announcement)."""
        logger.info("store %s: %s on another node", store_id, what)
        self._spawn(self.retire(store_id, what))
