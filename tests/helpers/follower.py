"""A :mod:`gateway.client` follower running in the background, for tests that write elsewhere
and check what a Python service saw: every batch it was given, in order, and a bounded wait
for a number of events (woken by each batch, never by polling)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from gateway.client import Batch, Cursor, Event, StoreClient
from tests.helpers.timeouts import TIMEOUT_UNIT


class Follower:
    """``store.events(after, live=True)`` consumed by a task; see :func:`following`."""

    def __init__(self, store: StoreClient, after: Cursor | None = None) -> None:
        self.store = store
        self.after = after
        self.batches: list[Batch] = []
        self.events: list[Event] = []
        # When each event arrived (time.monotonic), index for index with ``events``.
        self.arrived: list[float] = []
        self._grew = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(lambda _: self._grew.set())

    async def _run(self) -> None:
        async with aclosing(self.store.events(self.after, live=True)) as stream:
            async for batch in stream:
                now = time.monotonic()
                self.batches.append(batch)
                self.events += batch.events
                self.arrived += [now] * len(batch.events)
                self._grew.set()

    @property
    def cursor(self) -> Cursor | None:
        """The cursor after the last batch received (``after`` before any)."""
        return self.batches[-1].cursor if self.batches else self.after

    async def wait(self, count: int, within: float = 10 * TIMEOUT_UNIT) -> list[Event]:
        """Wait until at least ``count`` events arrived; fail if the stream ended or raised."""
        assert self._task is not None, "not started"
        deadline = time.monotonic() + within
        while len(self.events) < count:
            if self._task.done():
                error = None if self._task.cancelled() else self._task.exception()
                raise AssertionError(
                    f"the follower stopped after {len(self.events)} of {count} events: {error!r}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"the follower has {len(self.events)} of {count} events after {within:.1f}s"
                )
            # Nothing awaited since the length check: no batch can slip through unseen.
            self._grew.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), remaining)
        return self.events

    async def stop(self) -> None:
        """Stop following; a failure of the stream is raised here."""
        if self._task is None:
            return
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def following(store: StoreClient, after: Cursor | None = None) -> AsyncIterator[Follower]:
    """A started :class:`Follower` of ``store`` (already entered), stopped on exit."""
    follower = Follower(store, after)
    follower.start()
    try:
        yield follower
    finally:
        await follower.stop()


def as_app_event(event: Event) -> dict[str, Any]:
    """``event`` in the shape of a LiveStore app's confirmed eventlog entry (client.mjs
    ``dump``), to compare a Python client's view with an app's."""
    return {
        "seqNum": event.seq_num,
        "parentSeqNum": event.parent_seq_num,
        "name": event.name,
        "args": event.args,
        "clientId": event.client_id,
    }


async def read_log(store: StoreClient, within: float = 10 * TIMEOUT_UNIT) -> list[Event]:
    """The store's whole log, from the start to the head (``live=False``)."""

    async def read() -> list[Event]:
        async with aclosing(store.events(None, live=False)) as stream:
            return [event async for batch in stream for event in batch.events]

    return await asyncio.wait_for(read(), within)
