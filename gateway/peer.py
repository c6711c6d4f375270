"""One peer's sync requests: a WebSocket session (:class:`Peer`) or one HTTP-transport call.

Request state is keyed by the request id *of this connection* (two clients may both use
"0"). Pulls and pushes run as tasks, so the reader keeps answering Pings and taking Acks
while a catch-up streams or a push waits for the store. Every frame is written without
awaiting (``Wire.send``), which keeps frames in the order they were produced; the only
awaited sends are catch-up chunks (``Wire.send_paced``), which wait for the socket to drain
so a large backlog never piles up in memory. A connection whose queued bytes exceed
``limits.send_buffer_limit`` is evicted (close 1013): its client reconnects and re-pulls.

A pull whose store is loaded and whose backlog is empty (a client reconnecting with an
up-to-date cursor, or a new store) is answered on the spot, without a task.

Limits are read from the live configuration when they apply (a reload changes them for
open sessions too): ``send_buffer_limit`` at the next frame, ``catchup_window`` at the next
catch-up chunk, ``max_requests_per_connection`` at the next request.

:func:`http_call` runs one HTTP-transport request with the same decoding and checks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway import frames, protocol
from gateway.auth.policy import R_BYPASS
from gateway.config import LiveConfig
from gateway.engine import Backlog, SyncEngine
from gateway.errors import (
    CloseCode,
    FrameError,
    PayloadError,
    RpcFailure,
    StoreError,
    WireClosed,
    store_mismatch,
)
from gateway.hub import Subscription
from gateway.metrics import SessionCounters
from gateway.protocol import PING, Ack, Interrupt, PullRequest, PushRequest, Request, RequestId
from gateway.pushgate import Admitted, PullGate
from gateway.store import Writer

logger = logging.getLogger(__name__)

# The push gate (gateway.pushgate): rules and rate limiting; a failure refuses the batch.
BeforePush = Callable[[PushRequest], Awaitable[RpcFailure | None]]
# The pull side of the gate (the on_pull hook) for an HTTP call; a failure refuses the pull.
BeforePull = Callable[[PullRequest], Awaitable[RpcFailure | None]]


class Wire(Protocol):
    """The connection under a peer (``gateway.transport.ws.WsConnection``)."""

    @property
    def open(self) -> bool: ...

    def buffered(self) -> int: ...

    def send(self, data: bytes) -> None: ...

    async def send_paced(self, data: bytes) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...


class _Active:
    """An in-flight request: its task, and for a pull its subscription and Ack window."""

    __slots__ = ("acked", "subscription", "task", "unacked")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.subscription: Subscription | None = None
        self.unacked = 0
        self.acked: asyncio.Event | None = None

    def ack(self) -> None:
        if self.unacked > 0:
            self.unacked -= 1
            if self.acked is not None:
                self.acked.set()


class Peer:
    """The sync session of one WebSocket connection; also its hub ``Outbox``."""

    __slots__ = (
        "_active",
        "_admitted",
        "_before_push",
        "_evicted",
        "_pull_gate",
        "_session",
        "attributed",
        "connection",
        "counters",
        "engine",
        "events_in",
        "frames_out",
        "framing",
        "settings",
        "store_id",
        "writer",
    )

    def __init__(
        self,
        connection: Wire,
        store_id: str,
        engine: SyncEngine,
        *,
        settings: LiveConfig,
        counters: SessionCounters,
        before_push: BeforePush | None = None,
        writer: Writer | None = None,
        pull_gate: PullGate | None = None,
        session: Admitted | None = None,
    ) -> None:
        self.connection = connection
        self.writer = writer
        """Who this session's pushes are attributed to."""
        self.attributed = writer is not None and writer.reason == R_BYPASS
        """A service (bypass token): the events it pulls carry who pushed them."""
        self.store_id = store_id
        self.engine = engine
        self.settings = settings
        self.counters = counters
        self._before_push = before_push
        # The pull gate and what it is given of this session (its SessionInfo).
        self._pull_gate = pull_gate
        self._session = session
        self._active: dict[RequestId, _Active] = {}
        # Done once the connection's last push so far was handed to the engine (admitted in
        # its turn, or answered): the next one waits for it, so a client's pipelined pushes
        # are admitted in the order they came, whatever each awaits before (its gate, its
        # store's loading).
        self._admitted: asyncio.Future[None] | None = None
        self._evicted = False
        self.events_in = 0
        self.frames_out = 0
        # The RPC framing of the client (its first request's id type), for the logs: replies
        # follow each request's own id type (gateway.frames).
        self.framing: str | None = None

    # -- Outbox ---------------------------------------------------------------------------

    @property
    def send_limit(self) -> int:
        return self.settings.current.limits.send_buffer_limit

    def write(self, frame: bytes) -> None:
        connection = self.connection
        if self._evicted or not connection.open:
            return
        if connection.buffered() > self.settings.current.limits.send_buffer_limit:
            self.evict("slow consumer")
            return
        connection.send(frame)
        self.frames_out += 1

    def evict(self, reason: str) -> None:
        if self._evicted:
            return
        self._evicted = True
        self.counters.evictions += 1
        logger.warning("evicting store=%s: %s", self.store_id, reason)
        self._drop_requests()
        self.connection.close(CloseCode.TRY_AGAIN_LATER, reason)

    # -- reading --------------------------------------------------------------------------

    def handle(self, data: bytes) -> None:
        try:
            message = protocol.decode_frame(data)
        except FrameError as exc:
            self.write(frames.defect(str(exc)))
            return
        if message is PING:
            self.write(frames.PONG)
        elif isinstance(message, Request):
            self._start(message)
        elif isinstance(message, Ack):
            active = self._active.get(message.request_id)
            if active is not None:
                active.ack()
        elif isinstance(message, Interrupt):
            self._interrupt(message.request_id)
        # Anything else (Eof, Pong, unknown tags) is tolerated silently (spec §4.5).

    def _start(self, request: Request) -> None:
        if self.framing is None:
            self.framing = "effect4" if protocol.effect4(request.id) else "effect3"
            logger.debug("store=%s framing=%s", self.store_id, self.framing)
        rid_json = frames.request_id_json(request.id)
        if request.id in self._active:
            self.write(frames.exit_die(rid_json, f"request id {request.id} is already in use"))
            return
        tag = request.tag
        if tag != protocol.TAG_WS_PULL and tag != protocol.TAG_WS_PUSH:
            self.write(frames.exit_die(rid_json, f"Unknown request tag: {tag}"))
            return
        if len(self._active) >= self.settings.current.limits.max_requests_per_connection:
            self.write(frames.exit_die(rid_json, "too many concurrent requests"))
            return
        decoded = decode(request, self.store_id, rid_json, push=tag == protocol.TAG_WS_PUSH)
        if isinstance(decoded, bytes):
            self.write(decoded)
            return
        active = _Active()
        if isinstance(decoded, PushRequest):
            before, self._admitted = (
                self._admitted,
                asyncio.get_running_loop().create_future(),
            )
            runner = self._push(decoded, rid_json, before, self._admitted)
        else:
            pull = decoded
            subscription = (
                Subscription(self, self.store_id, rid_json, attributed=self.attributed)
                if pull.live
                else None
            )
            gate = self._pull_gate
            # A checked pull is opened in its task, once the gate has let it through.
            checked = gate is not None and gate.pulls_checked
            opened = None if checked else self.engine.open_pull_now(pull, subscription)
            if isinstance(opened, RpcFailure):
                self.write(frames.exit_fail(rid_json, opened))
                return
            if opened is not None and opened.after >= opened.upto:
                # Nothing to catch up: answer now, no task.
                self.write(frames.chunk_prefix(rid_json) + opened.state.empty_tail)
                if subscription is None:
                    self.write(frames.exit_success_void(rid_json))
                    return
                active.subscription = subscription
                self._active[request.id] = active
                subscription.go_live()
                return
            active.subscription = subscription
            runner = self._pull(pull, opened, rid_json, active, checked=checked)
        self._active[request.id] = active
        task = asyncio.get_running_loop().create_task(runner)
        active.task = task
        task.add_done_callback(lambda t: self._finished(request.id, active, t))

    def _finished(self, request_id: RequestId, active: _Active, task: asyncio.Task[None]) -> None:
        """Where every request task ends. One that died of an exception (a bug, a driver
        error nobody expected: expected failures are answered inside the task) cannot be
        answered within the RPC any more: the connection is closed with 1011, so the client
        treats the server as offline, reconnects and retries. Logged once, counted."""
        active.task = None
        error = None if task.cancelled() else task.exception()
        if error is not None:
            logger.error("request failed store=%s", self.store_id, exc_info=error)
            self.counters.requests_failed["ws"] += 1
            self._drop_requests()
            self.connection.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        # A live pull stays registered after its catch-up task ends.
        subscription = active.subscription
        ended = subscription is None or subscription.closed
        if ended and self._active.get(request_id) is active:
            del self._active[request_id]

    def _interrupt(self, request_id: RequestId) -> None:
        active = self._active.pop(request_id, None)
        if active is None:
            return
        if active.subscription is not None:
            self.engine.hub.unsubscribe(active.subscription)
        if active.task is not None:
            active.task.cancel()

    def _drop_requests(self) -> None:
        for request_id in tuple(self._active):
            self._interrupt(request_id)

    def close(self) -> None:
        """The connection is gone: drop subscriptions and stop request tasks."""
        self._drop_requests()

    # -- requests -------------------------------------------------------------------------

    async def _pull(
        self, pull: PullRequest, opened: Backlog | None, rid_json: bytes, active: _Active, *,
        checked: bool = False
    ) -> None:  # fmt: skip
        subscription = active.subscription
        if checked and self._pull_gate is not None:
            assert self._session is not None, "a peer with a pull gate has its session"
            refused = await self._pull_gate.check_pull(self._session, pull)
            if refused is not None:
                active.subscription = None
                self.write(frames.exit_fail(rid_json, refused))
                return
        try:
            if opened is None:
                answer = await self.engine.open_pull(pull, subscription)
                if isinstance(answer, RpcFailure):
                    active.subscription = None
                    self.write(frames.exit_fail(rid_json, answer))
                    return
                opened = answer
            prefix = frames.chunk_prefix(rid_json)
            limits = self.settings.current.limits
            async for item in self.engine.backlog_items(opened, attributed=self.attributed):
                while active.unacked >= limits.catchup_window:
                    if active.acked is None:
                        active.acked = asyncio.Event()
                    active.acked.clear()
                    await active.acked.wait()
                    limits = self.settings.current.limits
                active.unacked += 1
                if self._evicted:
                    return
                # Awaiting the drain paces the backlog to what the socket takes.
                await self.connection.send_paced(prefix + frames.chunk_tail(item))
                self.frames_out += 1
        except WireClosed:
            if subscription is not None:
                self.engine.hub.unsubscribe(subscription)
            return
        except StoreError as exc:
            # An UnknownError on a pull would stop the client's pull loop for good (spec
            # §7.3); closing makes it reconnect and pull again instead.
            logger.error("pull failed store=%s: %s", self.store_id, exc)
            if subscription is not None:
                self.engine.hub.unsubscribe(subscription)
            self.connection.close(CloseCode.INTERNAL_ERROR, "storage unavailable")
            return
        except BaseException:
            if subscription is not None:
                self.engine.hub.unsubscribe(subscription)
            raise
        if subscription is not None:
            active.acked = None
            subscription.go_live()
        else:
            self.write(frames.exit_success_void(rid_json))

    async def _push(
        self,
        push: PushRequest,
        rid_json: bytes,
        before: asyncio.Future[None] | None,
        admitted: asyncio.Future[None],
    ) -> None:
        try:
            if before is not None and not before.done():
                await asyncio.wait((before,))  # the connection's previous push goes first
            if self._before_push is not None and push.batch:
                refused = await self._before_push(push)
                if refused is not None:
                    self.write(frames.exit_fail(rid_json, refused))
                    return
            error = await self.engine.push(push, self.writer, admitted=admitted)
        except StoreError as exc:
            # Transient: the client must see "offline" and retry, not a final UnknownError.
            logger.error("push failed store=%s: %s", self.store_id, exc)
            self.connection.close(CloseCode.INTERNAL_ERROR, "storage unavailable")
            return
        finally:
            if not admitted.done():
                admitted.set_result(None)
        if error is None:
            self.events_in += len(push.batch)
            self.write(frames.exit_success(rid_json, frames.PUSH_ACK))
        else:
            self.write(frames.exit_fail(rid_json, error))


def decode(
    request: Request, store_id: str, rid_json: bytes, *, push: bool
) -> PushRequest | PullRequest | bytes:
    """A Push or Pull request's payload, checked against the connection's store; or the
    frame that answers it when it is malformed (Die) or names another store (Fail)."""
    try:
        decoded = (
            protocol.decode_push(request.payload)
            if push
            else protocol.decode_pull(request.payload, http=request.tag == protocol.TAG_HTTP_PULL)
        )
    except PayloadError as exc:
        return frames.exit_die(rid_json, str(exc))
    if decoded.store_id != store_id:
        return frames.exit_fail(rid_json, store_mismatch(decoded.store_id))
    return decoded


async def http_call(
    engine: SyncEngine,
    store_id: str,
    request: Request,
    before_push: BeforePush,
    writer: Writer | None = None,
    before_pull: BeforePull | None = None,
) -> list[bytes]:
    """Run one HTTP-transport request; the frames the WebSocket would have sent for it, the
    last being its ``Exit`` (spec §10)."""
    rid = frames.request_id_json(request.id)
    tag = request.tag
    if tag == protocol.TAG_HTTP_PING:
        return [frames.exit_success(rid, frames.HTTP_PONG)]
    if tag != protocol.TAG_HTTP_PUSH and tag != protocol.TAG_HTTP_PULL:
        return [frames.exit_die(rid, f"Unknown request tag: {tag}")]
    decoded = decode(request, store_id, rid, push=tag == protocol.TAG_HTTP_PUSH)
    if isinstance(decoded, bytes):
        return [decoded]
    # A StoreError (storage unavailable) propagates: the transport answers 503.
    if isinstance(decoded, PushRequest):
        error = await before_push(decoded) if decoded.batch else None
        if error is None:
            error = await engine.push(decoded, writer)
        if error is None:
            return [frames.exit_success(rid, frames.PUSH_ACK)]
        return [frames.exit_fail(rid, error)]
    refused = await before_pull(decoded) if before_pull is not None else None
    if refused is not None:
        return [frames.exit_fail(rid, refused)]
    opened = await engine.open_pull(decoded)
    if isinstance(opened, RpcFailure):
        return [frames.exit_fail(rid, opened)]
    prefix = frames.chunk_prefix(rid)
    attributed = writer is not None and writer.reason == R_BYPASS
    answer = [
        prefix + frames.chunk_tail(item)
        async for item in engine.backlog_items(opened, attributed=attributed)
    ]
    answer.append(frames.exit_success_void(rid))
    return answer
