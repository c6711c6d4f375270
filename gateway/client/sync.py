"""A synchronous facade over :mod:`gateway.client`, for scripts and other blocking code::

    from gateway.client import sync

    with sync.connect("ws://127.0.0.1:8787", "todos", bypass_token=TOKEN) as store:
        seq = store.commit("todoCreated-v1", {"id": "t1", "text": "hello"})
        for batch in store.events(live=False):
            ...

Each :class:`SyncStore` runs an asyncio event loop in a background thread and waits for the
asynchronous client there; semantics, arguments and exceptions are those of
:class:`gateway.client.StoreClient`. Do not call it from a running event loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, Self, TypeVar

from gateway.client import Batch, Cursor
from gateway.client import connect as connect_async

T = TypeVar("T")


class SyncStore:
    """The blocking client of one store; create it with :func:`connect`.

    Attributes:
        timeout: Seconds allowed for each call, or None (see :func:`connect`).
    """

    def __init__(self, url: str, store_id: str, timeout: float | None, **options: Any) -> None:
        self.timeout = timeout
        self._store = connect_async(url, store_id, **options)  # binds to no loop until used
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            # The timeout acts in the loop, so the work has been cancelled (and has cleaned
            # up) by the time TimeoutError reaches the caller.
            async with asyncio.timeout(self.timeout):
                return await coro

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C while waiting: stop the work in the loop too
            future.cancel()
            raise

    @property
    def head(self) -> Cursor | None:
        """The newest position the client has seen (:attr:`StoreClient.head`)."""
        return self._store.head

    def __enter__(self) -> Self:
        try:
            self._run(self._store.__aenter__())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session and stop the background loop (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._store.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def commit(self, name: str, args: Any = None) -> int:
        """:meth:`StoreClient.commit`: append one event; its final seqNum once acked."""
        return self._run(self._store.commit(name, args))

    def commit_many(self, events: Iterable[tuple[str, Any]]) -> list[int]:
        """:meth:`StoreClient.commit_many`: append ``(name, args)`` pairs; their seqNums."""
        return self._run(self._store.commit_many(list(events)))

    def events(self, after: Cursor | None = None, live: bool = True) -> Iterator[Batch]:
        """:meth:`StoreClient.events`: the store's batches after ``after``; ``timeout`` bounds
        the wait for each batch. Closing the iterator (or leaving its ``for``) ends the pull."""
        stream = self._store.events(after, live)

        async def step() -> Batch | None:
            return await anext(stream, None)

        async def end() -> None:
            await stream.aclose()

        try:
            while (batch := self._run(step())) is not None:
                yield batch
        finally:
            if not self._loop.is_closed():
                self._run(end())


def connect(url: str, store_id: str, *, timeout: float | None = None, **options: Any) -> SyncStore:
    """A blocking client of one store; use it as ``with connect(...) as store:``.

    Args:
        url: The server's base URL, as for :func:`gateway.client.connect`.
        store_id: The store.
        timeout: Seconds allowed for each call (connecting, a commit, the next batch);
            ``None`` waits as long as the client retries. ``TimeoutError`` when exceeded.
        **options: The keyword arguments of :func:`gateway.client.connect`
            (``bypass_token=``, ``auth_token=``, ``client_id=``, ...).

    Returns:
        The client; entering it opens the session.
    """
    return SyncStore(url, store_id, timeout, **options)
