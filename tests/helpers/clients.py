"""A raw-protocol WebSocket test client for the gateway.

``RpcClient`` speaks the Effect-RPC-over-JSON frames of spec §4 directly, one JSON object per
text frame, so the conformance tests can send exactly the bytes they mean (including malformed
ones) and see exactly what the server answers. It mirrors the real 0.4.0 client in one respect:
by default it answers every ``Chunk`` with an ``Ack``, because a server MAY use acks as a window
(spec §5.6).

Frames for different requests interleave on one connection. ``RpcClient`` therefore keeps frames
it read but that did not match what a test asked for in an ordered stash, and hands them out
later. Nothing here sleeps: every wait is a bounded read, and "nothing arrived" is proven with
``barrier()``, which sends a ``Ping`` and returns everything that came before the ``Pong``
(frames are ordered per connection).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    NO_MORE,
    NONE,
    PULL,
    PUSH,
    Frame,
    assert_pull_response,
    assert_push_ok,
    assert_stream_success,
    events_of,
    for_request,
    is_chunk,
    is_exit,
    request_frame,
    some,
)

_MISSING: Any = object()

# Frames from the server can legitimately be ~900 KB plus envelope; never let the client refuse one.
CLIENT_MAX_SIZE = 64 * 1024 * 1024


class RpcClient:
    """One WebSocket connection speaking raw RPC frames.

    Args:
        ws: an open ``websockets`` client connection.
        store_id: the storeId used in request payloads (normally the URL's).
        payload: the syncPayload put into request payloads; omitted when ``None``.
        auto_ack: answer every received ``Chunk`` with an ``Ack``, like the real client.
    """

    def __init__(
        self,
        ws: ClientConnection,
        store_id: str,
        *,
        payload: Any = None,
        auto_ack: bool = True,
    ) -> None:
        self.ws = ws
        self.store_id = store_id
        self.payload = payload
        self.auto_ack = auto_ack
        # Frames read but not yet handed out, by requestId (None when absent), each tagged
        # with its arrival number so that the overall order can be rebuilt.
        self._stash: dict[Any, deque[tuple[int, Frame]]] = {}
        self._arrivals = itertools.count()
        # Automatic ids start high so that ids a test chooses ("0", "41", ...) never collide.
        self._ids = itertools.count(100)

    @classmethod
    async def open(
        cls,
        url: str,
        store_id: str,
        *,
        payload: Any = None,
        auto_ack: bool = True,
        **connect_kwargs: Any,
    ) -> RpcClient:
        """Connect to ``url`` (raising ``InvalidStatus`` if the upgrade is refused)."""
        kwargs: dict[str, Any] = {
            "max_size": CLIENT_MAX_SIZE,
            "compression": None,
            "ping_interval": None,
            "open_timeout": 5 * TIMEOUT_UNIT,
            "close_timeout": 2 * TIMEOUT_UNIT,
            "proxy": None,
        }
        kwargs.update(connect_kwargs)
        ws = await connect(url, **kwargs)
        return cls(ws, store_id, payload=payload, auto_ack=auto_ack)

    async def close(self) -> None:
        await self.ws.close()

    def new_id(self) -> str:
        return str(next(self._ids))

    # -- the stash -------------------------------------------------------------------------

    def _put(self, frame: Frame) -> None:
        key = frame.get("requestId") if isinstance(frame, dict) else None
        if not isinstance(key, str | int):
            key = None
        self._stash.setdefault(key, deque()).append((next(self._arrivals), frame))

    def _stashed(self) -> list[Frame]:
        """Every stashed frame, in arrival order."""
        merged = sorted(entry for queue in self._stash.values() for entry in queue)
        return [frame for _, frame in merged]

    def _take_where(self, pred: Callable[[Frame], bool]) -> Frame:
        """Remove and return the earliest stashed frame satisfying ``pred``, or ``_MISSING``."""
        best: tuple[int, Any] | None = None
        for key, queue in self._stash.items():
            for arrival, frame in queue:
                if best is not None and arrival > best[0]:
                    break
                if pred(frame):
                    best = (arrival, key)
                    break
        if best is None:
            return _MISSING
        arrival, key = best
        queue = self._stash[key]
        for index, (number, frame) in enumerate(queue):
            if number == arrival:
                del queue[index]
                if not queue:
                    del self._stash[key]
                return frame
        raise AssertionError("unreachable")  # pragma: no cover

    # -- sending ---------------------------------------------------------------------------

    async def send(self, obj: Any) -> None:
        """Send one JSON value as a text frame."""
        await self.ws.send(orjson.dumps(obj).decode())

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame verbatim (``str`` → text frame, ``bytes`` → binary frame)."""
        await self.ws.send(data)

    def base_payload(self, store_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"storeId": self.store_id if store_id is None else store_id}
        if self.payload is not None:
            body["payload"] = self.payload
        return body

    async def request(self, tag: str, payload: Any, rid: str | None = None) -> str:
        """Send a ``Request`` frame and return its id."""
        rid = self.new_id() if rid is None else rid
        await self.send(request_frame(rid, tag, payload))
        return rid

    async def send_pull(
        self,
        cursor: dict[str, Any] | None = None,
        *,
        live: bool = False,
        rid: str | None = None,
    ) -> str:
        """Send a ``SyncWsRpc.Pull``; ``cursor=None`` means ``Option.none()``."""
        body = self.base_payload()
        body["live"] = live
        body["cursor"] = NONE if cursor is None else cursor
        return await self.request(PULL, body, rid)

    async def send_push(
        self,
        batch: list[dict[str, Any]],
        backend_id: str | None = None,
        *,
        rid: str | None = None,
        store_id: str | None = None,
    ) -> str:
        """Send a ``SyncWsRpc.Push``; ``backend_id=None`` means ``Option.none()``."""
        body = self.base_payload(store_id)
        body["batch"] = batch
        body["backendId"] = NONE if backend_id is None else some(backend_id)
        return await self.request(PUSH, body, rid)

    # -- receiving -------------------------------------------------------------------------

    async def _read(self, within: float) -> Frame:
        raw = await asyncio.wait_for(self.ws.recv(), within)
        frame = orjson.loads(raw)
        if self.auto_ack and is_chunk(frame):
            await self.send({"_tag": "Ack", "requestId": frame["requestId"]})
        return frame

    async def _read_by(self, deadline: float, failure: Callable[[], str]) -> Frame:
        """The next frame, read before ``deadline`` (``time.monotonic()``); else fail with
        the message ``failure()`` gives at that moment."""
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            return await self._read(remaining)
        except TimeoutError:
            raise AssertionError(failure()) from None

    async def recv(self, within: float = 5 * TIMEOUT_UNIT) -> Frame:
        """The next frame (stashed ones first); ``TimeoutError`` if none arrives in time."""
        if self._stash:
            return self._take_where(lambda _: True)
        return await self._read(within)

    async def recv_where(
        self,
        pred: Callable[[Frame], bool],
        within: float = 5 * TIMEOUT_UNIT,
        what: str = "a matching frame",
    ) -> Frame:
        """The first frame satisfying ``pred``; others are stashed in arrival order."""
        if self._stash:
            found = self._take_where(pred)
            if found is not _MISSING:
                return found
        deadline = time.monotonic() + within
        while True:
            frame = await self._read_by(
                deadline,
                lambda: (
                    f"timed out after {within:.1f}s waiting for {what}; "
                    f"unmatched frames so far: {_short(self._stashed())}"
                ),
            )
            if pred(frame):
                return frame
            self._put(frame)

    async def recv_for(self, rid: str, within: float = 5 * TIMEOUT_UNIT) -> Frame:
        """The next frame whose ``requestId`` is ``rid``."""
        queue = self._stash.get(rid)
        if queue:
            _, frame = queue.popleft()
            if not queue:
                del self._stash[rid]
            return frame
        return await self.recv_where(
            lambda f: for_request(f, rid), within, f"a frame for request {rid!r}"
        )

    async def wait_exit(self, rid: str, within: float = 5 * TIMEOUT_UNIT) -> Frame:
        """The ``Exit`` for ``rid``; any Chunk for ``rid`` before it is an error."""
        frame = await self.recv_for(rid, within)
        assert is_exit(frame, rid), f"expected the Exit for {rid!r}, got {_short([frame])}"
        return frame

    async def collect(self, rid: str, within: float = 10 * TIMEOUT_UNIT) -> list[Frame]:
        """All frames for ``rid`` up to and including its ``Exit``."""
        frames = []
        deadline = time.monotonic() + within
        while True:
            frame = await self.recv_for(rid, max(deadline - time.monotonic(), 0.001))
            frames.append(frame)
            if is_exit(frame):
                return frames

    async def next_items(self, rid: str, within: float = 5 * TIMEOUT_UNIT) -> list[Any]:
        """The ``values`` of the next frame for ``rid``, which must be a non-empty Chunk."""
        frame = await self.recv_for(rid, within)
        assert is_chunk(frame, rid), f"expected a Chunk for {rid!r}, got {_short([frame])}"
        values = frame.get("values")
        assert isinstance(values, list), frame
        assert values, f"Chunk values must be non-empty: {frame!r}"
        return values

    async def items_until_no_more(self, rid: str, within: float = 10 * TIMEOUT_UNIT) -> list[Any]:
        """Chunk items for ``rid`` up to and including the first ``NoMore`` item."""
        items: list[Any] = []
        deadline = time.monotonic() + within
        while True:
            values = await self.next_items(rid, max(deadline - time.monotonic(), 0.001))
            for item in values:
                assert_pull_response(item)
                items.append(item)
            if items[-1]["pageInfo"]["_tag"] == "NoMore":
                for item in items[:-1]:
                    assert item["pageInfo"]["_tag"] != "NoMore", "NoMore before the last item"
                return items

    async def live_events(
        self, rid: str, until_seq: int, within: float = 10 * TIMEOUT_UNIT
    ) -> list[dict[str, Any]]:
        """Live events for ``rid`` until one with ``seqNum >= until_seq`` has arrived."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + within
        while not events or events[-1]["seqNum"] < until_seq:
            for item in await self.next_items(rid, max(deadline - time.monotonic(), 0.001)):
                assert_pull_response(item)
                events.extend(events_of([item]))
        return events

    async def barrier(self, within: float = 5 * TIMEOUT_UNIT) -> list[Frame]:
        """Send a ``Ping``; return every frame received before its ``Pong`` (stash included)."""
        await self.send({"_tag": "Ping"})
        frames = self._stashed()
        self._stash.clear()
        deadline = time.monotonic() + within
        while True:
            frame = await self._read_by(
                deadline,
                lambda: f"no Pong within {within:.1f}s; frames before it: {_short(frames)}",
            )
            if frame == {"_tag": "Pong"}:
                return frames
            frames.append(frame)

    async def expect_silence(self, within: float) -> None:
        """Wait ``within`` seconds for a frame and fail if one arrives."""
        assert not self._stash, f"unexpected frames: {_short(self._stashed())}"
        try:
            frame = await self._read(within)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame for {within:.1f}s, got {_short([frame])}")

    # -- request/response shortcuts ----------------------------------------------------------

    async def pull(
        self, cursor: dict[str, Any] | None = None, *, within: float = 10 * TIMEOUT_UNIT
    ) -> list[Any]:
        """A non-live pull: return its ``PullResponse`` items, asserting a clean Exit Success."""
        rid = await self.send_pull(cursor, live=False)
        frames = await self.collect(rid, within)
        *chunks, last = frames
        assert_stream_success(last)
        items = []
        for chunk in chunks:
            assert is_chunk(chunk, rid), chunk
            assert chunk["values"], f"Chunk values must be non-empty: {chunk!r}"
            items.extend(chunk["values"])
        assert items, "a pull must answer at least one PullResponse"
        for item in items:
            assert_pull_response(item)
        assert items[-1]["pageInfo"] == NO_MORE, f"catch-up must end with NoMore: {items[-1]!r}"
        return items

    async def backend_id(self) -> str:
        """The server's backendId for this store, learnt through a non-live pull."""
        items = await self.pull()
        return items[0]["backendId"]  # type: ignore[no-any-return]

    async def live_pull(
        self, cursor: dict[str, Any] | None = None, *, rid: str | None = None
    ) -> tuple[str, list[Any]]:
        """Open a live pull and read its catch-up through ``NoMore``; return (id, items)."""
        rid = await self.send_pull(cursor, live=True, rid=rid)
        return rid, await self.items_until_no_more(rid)

    async def push(
        self,
        batch: list[dict[str, Any]],
        backend_id: str | None = None,
        *,
        within: float = 10 * TIMEOUT_UNIT,
        store_id: str | None = None,
    ) -> Frame:
        """Send a Push and return its ``Exit`` frame."""
        rid = await self.send_push(batch, backend_id, store_id=store_id)
        return await self.wait_exit(rid, within)

    async def push_ok(self, batch: list[dict[str, Any]], backend_id: str | None = None) -> None:
        """Push and assert ``Exit Success {}``."""
        assert_push_ok(await self.push(batch, backend_id))


def _short(frames: list[Frame], limit: int = 600) -> str:
    text = repr(frames)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


async def open_raw_socket(host: str, port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A connected non-blocking TCP socket, optionally with a tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


# The ``connect`` fixture (tests/conformance): ``await connect(gateway, store_id, payload=...)``.
Connect = Callable[..., Awaitable[RpcClient]]
