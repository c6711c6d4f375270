"""The write side of :class:`gateway.client.store.StoreClient`: batched, optionally
pipelined commits.

Every ``commit()``/``commit_many()`` call appends its events to one queue and gets a future.
A single writer task per client takes the queued events in order, up to 100 events and
900,000 bytes per push (the sync protocol's limits, spec §6.1), numbers them after the last
event it pushed (acknowledged or not) and sends the push. With ``window`` 1 (the default) the
next push goes out when this one is answered, carrying everything committed meanwhile. With
a larger window, after a push of 100 events the next one goes out without waiting for its
answer, up to ``window`` pushes in flight; after a smaller push the writer waits for the
answers first.

The server answers the pushes of one connection in order. An ack resolves its events. Any
other answer breaks the chain (each later push names a parent that may now be wrong), so the
writer stops sending, waits until every push in flight has its answer, and settles them in
order (:mod:`gateway.client.settle` tells what became of each):

- written (acknowledged, or found in the log after its answer was lost): resolved;
- possibly still being admitted (lost, and the log does not reach past its parent yet): sent
  again *unchanged* (the server accepts at most one push per parent);
- not written (refused with ``ServerAheadError``, or not in the log): back to the front of
  the queue with every later one, in order, to be numbered again on top of the server's head
  (rebase);
- refused for good (``UnknownError``, ``BackendIdMismatchError``): its commits fail, and so
  does every commit queued behind it that is not written, with the same exception: they were
  ordered after events that will never exist. Commits made afterwards are pushed as usual.

Why pipelining is not the default, and only full pushes are pipelined: the server accepts a
push when its first parentSeqNum is the head, and nothing else. When push k is refused
because another writer got there first, push k+1 (already sent) names push k's last seqNum
as its parent, and is *accepted* if the other writer's events happen to end exactly there.
This client's later events then precede its earlier ones in the log: nothing is lost or
written twice, but the order is broken, and the writer can only report it (a warning on the
``gateway.client`` logger, ``stats.reordered``). It takes another writer landing exactly as
many events as push k held, in the moment between the two pushes: likely for a push of one
event; for pushes of 100, rare against LiveStore apps (at most 50 events a push) but common
against another pipelining writer, whose pushes are 100 events too (two such clients on one
store reorder within seconds). No numbering avoids it, since the check is on the parent's
number only; LiveStore's own client never has two pushes in flight. Pipelining is for a store
this client writes alone (an import, a service that owns the store).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson

from gateway import protocol
from gateway.client.connection import Closed, Message, Session
from gateway.client.decode import failure
from gateway.client.model import ConnectionClosed, Cursor
from gateway.client.settle import UNCERTAIN, WRITTEN, outcomes_of

if TYPE_CHECKING:
    from gateway.client.store import StoreClient

TAG_PUSH: Final = "SyncWsRpc.Push"
MAX_PUSH_EVENTS: Final = 100
MAX_PUSH_BYTES: Final = 900_000
# What one event adds to a push's JSON besides its name, args, clientId and sessionId: keys,
# punctuation, a comma, and two seqNums of up to 16 digits.
_EVENT_OVERHEAD: Final = (
    len('{"name":,"args":,"seqNum":,"parentSeqNum":,"clientId":,"sessionId":},') + 2 * 16
)
# The payload around the batch, with room for a backendId of up to 200 bytes.
_PAYLOAD_OVERHEAD: Final = len('{"storeId":,"batch":[],"backendId":{"_tag":"Some","value":}}') + 200

logger = logging.getLogger("gateway.client")


class _Commit:
    """One ``commit_many()`` call: its future and the final seqNums of its events."""

    __slots__ = ("future", "remaining", "seqs")

    def __init__(self, future: asyncio.Future[list[int]], count: int) -> None:
        self.future = future
        self.seqs = [0] * count
        self.remaining = count

    @property
    def failed(self) -> bool:
        """Done with events still unwritten: failed (its queued events are dropped)."""
        return self.remaining > 0 and self.future.done()

    def written(self, index: int, seq: int) -> None:
        self.seqs[index] = seq
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.seqs)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _Entry:
    """One event waiting to be written; name and args are already JSON."""

    __slots__ = ("args", "commit", "index", "name", "name_json", "size")

    def __init__(
        self, commit: _Commit, index: int, name: str, name_json: bytes, args_json: bytes
    ) -> None:
        self.commit = commit
        self.index = index
        self.name = name
        self.name_json = orjson.Fragment(name_json)
        self.args = orjson.Fragment(args_json)
        self.size = len(name_json) + len(args_json)


class Push:
    """Events numbered ``parent + 1 …`` and sent in one push; ``answer`` ends with its Exit
    (or the connection's :class:`Closed`)."""

    __slots__ = ("answer", "backend_id", "entries", "full", "parent", "uncertain")

    def __init__(self, entries: list[_Entry], backend_id: str, parent: int, full: bool) -> None:
        self.entries = entries
        self.backend_id = backend_id
        self.parent = parent
        self.full = full
        self.uncertain = False
        """An earlier copy of this push may have been written (its answer was lost)."""
        self.answer: asyncio.Future[Message] | None = None

    @property
    def first(self) -> int:
        return self.parent + 1

    @property
    def last(self) -> int:
        return self.parent + len(self.entries)


class Writer:
    """The commit queue and writer task of one :class:`StoreClient`; see the module docstring."""

    def __init__(self, client: StoreClient, *, window: int) -> None:
        if window < 1:
            raise ValueError("the push window must be at least 1")
        self._client = client
        self._window_size = window
        self._queue: deque[_Entry] = deque()  # not numbered yet
        self._resend: deque[Push] = deque()  # numbered: to be sent again unchanged
        self._window: deque[Push] = deque()  # sent, not settled, in order
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        ids = orjson.dumps(client.client_id) + orjson.dumps(client.session_id)
        self._per_event = _EVENT_OVERHEAD + len(ids)
        self._budget = MAX_PUSH_BYTES - _PAYLOAD_OVERHEAD - len(orjson.dumps(client.store_id))

    # -----------------------------------------------------------------------------------------
    # The callers' side

    def submit(self, events: Iterable[tuple[str, Any]]) -> asyncio.Future[list[int]]:
        """Queue ``events`` (in order, after everything queued before); the future resolves
        with their seqNums once all are acknowledged.

        Raises:
            ConnectionClosed: The client is closed.
            TypeError: A name is not a string, or args are not JSON-serialisable.
            ValueError: An event is larger than a push may be.
        """
        if self._closed:
            raise ConnectionClosed(1000, "the client is closed")
        items = list(events)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        commit = _Commit(future, len(items))
        entries: list[_Entry] = []
        for index, (name, args) in enumerate(items):
            if not isinstance(name, str):
                raise TypeError(f"event {index}: the name must be a str, not {type(name).__name__}")
            entry = _Entry(commit, index, name, protocol.dumps(name), protocol.dumps(args))
            if self._per_event + entry.size > self._budget:
                raise ValueError(
                    f"event {index} ({name!r}) takes {self._per_event + entry.size} bytes of "
                    f"JSON: over the {MAX_PUSH_BYTES:,}-byte limit of one push"
                )
            entries.append(entry)
        if not entries:
            future.set_result([])
            return future
        future.add_done_callback(_retrieve)
        self._queue.extend(entries)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return future

    async def close(self) -> None:
        """Stop writing; every commit not acknowledged yet fails with ConnectionClosed."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail_all(ConnectionClosed(1000, "the client is closed"))

    # -----------------------------------------------------------------------------------------
    # The writer task

    async def _run(self) -> None:
        while True:
            if not (self._queue or self._resend):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Terminal (refused, closed for good, a protocol violation, a store reset
                # seen by a read) or a bug: nothing pending can be written now, and every
                # waiting commit gets the exception rather than hang.
                self._fail_all(exc)

    async def _drain(self) -> None:
        """Push until nothing is queued or in flight."""
        client = self._client
        window = self._window
        tip: Cursor | None = None  # the last event numbered
        conn: Session | None = None
        while self._queue or self._resend or window:
            if not window:
                conn = await client._connection()
                if not self._resend:
                    tip = await self._base(tip)
            assert conn is not None
            self._wake.clear()
            while self._may_send(conn):
                push = self._resend.popleft() if self._resend else self._take(tip)
                if push is None:
                    break  # only failed commits' events were queued
                await self._send(conn, push)
                tip = Cursor(push.backend_id, push.last)
            if not window:
                if not conn.alive:
                    client._lost(conn)  # counts towards the backoff (or raises if terminal)
                continue
            first = window[0]
            assert first.answer is not None
            if not first.answer.done():
                await self._wait(first.answer, conn)
                if not first.answer.done():
                    continue  # woken by a new commit: send it
            message = first.answer.result()
            if not isinstance(message, Closed) and failure(message) is None:
                window.popleft()
                self._resolve(first)
                client._backoff.succeeded()
                continue
            tip = await self._settle(conn)

    def _may_send(self, conn: Session) -> bool:
        window = self._window
        return (
            bool(self._queue or self._resend)
            and conn.alive
            and len(window) < self._window_size
            and (not window or window[-1].full)
        )

    async def _wait(self, answer: asyncio.Future[Message], conn: Session) -> None:
        """Until ``answer`` arrives, or (when one more push could go out) a new commit."""
        if not self._may_send_later(conn):
            await asyncio.wait((answer,))
            return
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((answer, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    def _may_send_later(self, conn: Session) -> bool:
        window = self._window
        return conn.alive and len(window) < self._window_size and window[-1].full

    async def _base(self, tip: Cursor | None) -> Cursor:
        """Where to number from when nothing is in flight: the newest head known."""
        head = self._client.head
        if head is None:
            head = await self._client._probe_backend()
        if tip is None or tip.backend_id != head.backend_id or head.seq > tip.seq:
            return head
        return tip

    def _take(self, tip: Cursor | None) -> Push | None:
        """The next push from the queue, numbered after ``tip``."""
        assert tip is not None
        queue = self._queue
        entries: list[_Entry] = []
        used = 0
        while queue and len(entries) < MAX_PUSH_EVENTS:
            entry = queue[0]
            if entry.commit.failed:
                queue.popleft()
                continue
            size = self._per_event + entry.size
            if used + size > self._budget:
                break
            used += size
            entries.append(queue.popleft())
        if not entries:
            return None
        return Push(entries, tip.backend_id, tip.seq, full=len(entries) == MAX_PUSH_EVENTS)

    async def _send(self, conn: Session, push: Push) -> None:
        """Send ``push`` on ``conn`` (this task sends every push: they go out in order)."""
        client = self._client
        parent = push.parent
        batch = [
            {
                "name": entry.name_json,
                "args": entry.args,
                "seqNum": parent + 1 + i,
                "parentSeqNum": parent + i,
                "clientId": client.client_id,
                "sessionId": client.session_id,
            }
            for i, entry in enumerate(push.entries)
        ]
        payload = {
            "storeId": client.store_id,
            "batch": batch,
            "backendId": {"_tag": "Some", "value": push.backend_id},
        }
        rid, queue = conn.request()
        push.answer = asyncio.ensure_future(_answer(conn, rid, queue))
        self._window.append(push)
        stats = client.stats
        stats.pushes += 1
        stats.most_in_flight = max(stats.most_in_flight, len(self._window))
        await conn.send_request(rid, TAG_PUSH, payload)

    def _resolve(self, push: Push) -> None:
        for i, entry in enumerate(push.entries):
            entry.commit.written(entry.index, push.first + i)
        self._client._learn(Cursor(push.backend_id, push.last))

    # -----------------------------------------------------------------------------------------
    # When the chain breaks

    async def _settle(self, conn: Session) -> Cursor:
        """Every push in flight answered (or lost): resolve, resend, rebase or fail each, in
        order (see the module docstring); the position to number the queue after."""
        client = self._client
        pushes = list(self._window)
        messages = [await _answered(push) for push in pushes]
        outcomes, heads = await outcomes_of(client, conn, pushes, messages, self._resolve)
        backend = pushes[0].backend_id
        self._window.clear()

        retry: list[_Entry] = []
        resend: list[Push] = []
        refusal: Exception | None = None
        for push, outcome in zip(pushes, outcomes, strict=True):
            if outcome == WRITTEN:
                if retry:
                    self._reordered(push, retry)
            elif refusal is not None or isinstance(outcome, Exception):
                if refusal is None:
                    assert isinstance(outcome, Exception)
                    refusal = outcome
                for entry in push.entries:
                    entry.commit.fail(refusal)
            elif outcome == UNCERTAIN and not retry:
                push.uncertain = True
                resend.append(push)
            else:
                # Not written (or uncertain behind one that was not: its parent is not
                # this client's any more, so numbering it again is the only way on).
                retry.extend(push.entries)
        if refusal is not None:
            for entry in self._queue:
                entry.commit.fail(refusal)
            self._queue.clear()
        if retry:
            client.stats.rebases += 1
        self._queue.extendleft(reversed(retry))
        self._resend.extend(resend)
        if resend:
            return Cursor(backend, resend[0].parent)
        head = max(heads) if heads else pushes[0].parent
        client._learn(Cursor(backend, head))
        return Cursor(backend, head)

    def _reordered(self, push: Push, earlier: list[_Entry]) -> None:
        self._client.stats.reordered += len(earlier)
        logger.warning(
            "store %s: events %d-%d of client %s were written before %d of its events "
            "committed earlier (another writer's events ended exactly at their parent); "
            "those are written after them",
            self._client.store_id,
            push.first,
            push.last,
            self._client.client_id,
            len(earlier),
        )

    def _fail_all(self, exc: BaseException) -> None:
        """Fail every commit not written yet: in flight, to resend, queued."""
        for push in (*self._window, *self._resend):
            if push.answer is not None:
                push.answer.cancel()
            for entry in push.entries:
                entry.commit.fail(exc)
        for entry in self._queue:
            entry.commit.fail(exc)
        self._window.clear()
        self._resend.clear()
        self._queue.clear()


async def _answer(conn: Session, rid: str, queue: asyncio.Queue[Message]) -> Message:
    """The Exit of one push (or the connection's Closed)."""
    try:
        while True:
            message = await queue.get()
            if isinstance(message, Closed) or message.get("_tag") == "Exit":
                return message
    finally:
        conn.forget(rid)


async def _answered(push: Push) -> Message:
    assert push.answer is not None  # set when it was sent
    return await push.answer


def _retrieve(future: asyncio.Future[list[int]]) -> None:
    """Mark a failure as seen: a commit whose caller stopped waiting logs nothing."""
    if not future.cancelled():
        future.exception()
