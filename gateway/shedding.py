"""Load shedding of WebSocket handshakes: refuse fast rather than time out.

During a reconnect storm (a deploy restarts the server and every client comes back within a
second or two) the event loop cannot decide every upgrade within the client's open timeout:
accepted connections queue up, and the last ones in the queue would wait past it, after the
server had spent accept and parse work on them anyway. Shedding answers a sync handshake at
once with ``503 OVERLOADED`` and a ``Retry-After`` while too many handshakes are already
*pending* (accepted, request not yet answered): the answer costs no credential check, no store
and no pull, and the client retries with its backoff (ours waits at least ``Retry-After``).

The decision is taken as the request arrives (its bytes parsed, before its handshake joins
the queue of work), so a shed client has not waited; ``pending`` is the queue ahead of it.
Pure: the listener counts what is pending and asks :func:`shed` for each sync handshake.
"""

from __future__ import annotations

from typing import Final

from gateway.errors import Refusal, RefusalCode

# The longest Retry-After we suggest (s): past this a client's own backoff is the better guide.
MAX_RETRY_AFTER: Final = 10


def is_sync_target(target: str) -> bool:
    """Whether a request target names a store (a sync request; ``/healthz``, ``/metrics``
    and the other endpoints never do). Cheap on purpose: the full parse comes later."""
    query = target.partition("?")[2]
    return "storeId=" in query or "transport=" in query


def retry_after(pending: int, limit: int) -> int:
    """Seconds to suggest: 1 at the bound, one more per further ``limit`` handshakes pending
    (the longer the queue, the later the retry), at most :data:`MAX_RETRY_AFTER`."""
    if limit < 1:
        return 1
    return max(1, min(MAX_RETRY_AFTER, pending // limit))


def shed(pending: int, *, limit: int) -> Refusal | None:
    """The refusal for a sync handshake that arrives while ``pending`` others are pending
    (this one not counted), or None to serve it. ``limit`` 0 never sheds."""
    if limit <= 0 or pending < limit:
        return None
    return Refusal(
        code=RefusalCode.OVERLOADED,
        message="server overloaded, retry later",
        headers=(("Retry-After", str(retry_after(pending, limit))),),
    )
