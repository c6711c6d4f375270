"""What became of the pushes a writer had in flight when its chain broke
(:mod:`gateway.client.writer`).

The server answers the pushes of one session in order. When an answer is not an ack, the
writer waits for every answer in flight and :func:`outcomes_of` tells, push by push:

- acknowledged: :data:`WRITTEN`;
- refused with ``ServerAheadError``: :data:`NOT_WRITTEN` (the error carries the server's
  head); but a refused *copy* of a push whose first answer was lost, when the server's head
  is past its parent, is :data:`UNCERTAIN`: the first copy may be what got there;
- refused for good (``UnknownError``, ``BackendIdMismatchError``): that exception;
- its answer lost with the session: looked up in the log from its parent on. The event at its
  first seqNum is this client's (clientId, sessionId, name): :data:`WRITTEN`; another event
  there, or the log's head past its parent: :data:`NOT_WRITTEN`. When the log does not reach
  past its parent yet, the server may still be admitting it (its admission outlives the
  connection): :data:`UNCERTAIN`, and the writer sends it again *unchanged*. The server
  accepts at most one push per parent, so whichever copy lands is the only one, and a refusal
  of the copy brings the writer back here, to the log, which then decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

from gateway.client.connection import Closed, Message, Session
from gateway.client.decode import failure, failure_error
from gateway.client.model import Cursor, Event, ProtocolViolation

if TYPE_CHECKING:
    from gateway.client.store import StoreClient
    from gateway.client.writer import Push

WRITTEN: Final = "written"
NOT_WRITTEN: Final = "not written"
UNCERTAIN: Final = "uncertain"

Outcome = str | Exception
""":data:`WRITTEN`, :data:`NOT_WRITTEN`, :data:`UNCERTAIN`, or the exception of a refusal."""


async def outcomes_of(
    client: StoreClient,
    conn: Session,
    pushes: Sequence[Push],
    messages: Sequence[Message],
    resolve: Callable[[Push], None],
) -> tuple[list[Outcome], list[int]]:
    """The outcome of each of ``pushes`` (consecutive, in the order sent; ``messages`` are
    their answers, or the session's :class:`Closed`), and the server heads learnt meanwhile.

    A push found written is passed to ``resolve`` at once. Reading the log reconnects when
    the session was lost.

    Raises:
        ClientError: The session was lost and reconnecting cannot help.
    """
    backend = pushes[0].backend_id
    heads: list[int] = []
    outcomes: list[Outcome] = []
    lost = False
    for push, message in zip(pushes, messages, strict=True):
        if isinstance(message, Closed):
            lost = True
            outcomes.append(UNCERTAIN)
            continue
        error = failure(message)
        if error is None:
            outcomes.append(WRITTEN)
            resolve(push)
            heads.append(push.last)
        elif error.get("_tag") == "ServerAheadError":
            head = _server_head(error, push)
            heads.append(head)
            if head < push.parent:
                # The server is behind what this client believed: believe the server.
                client._learn(Cursor(backend, head), force=True)
            # A copy of an uncertain push refused: its first copy may be what got there.
            maybe = push.uncertain and head > push.parent
            outcomes.append(UNCERTAIN if maybe else NOT_WRITTEN)
        else:
            outcomes.append(failure_error(error))
    if lost:
        client._lost(conn)  # raises when reconnecting cannot help
    check = [push for push, outcome in zip(pushes, outcomes, strict=True) if outcome == UNCERTAIN]
    if check:
        found, last = await _read_log(client, check)
        heads.append(last)
        top = max(heads)
        for i, push in enumerate(pushes):
            if outcomes[i] != UNCERTAIN:
                continue
            if id(push) in found:
                outcomes[i] = WRITTEN
                resolve(push)
                heads.append(push.last)
            elif top > push.parent:
                outcomes[i] = NOT_WRITTEN
    return outcomes, heads


async def _read_log(client: StoreClient, pushes: list[Push]) -> tuple[set[int], int]:
    """Which of ``pushes`` (consecutive, outcome unknown) the log holds, by the event at each
    one's first seqNum; and the last seqNum read (the log's head, or a seqNum past the last
    push)."""
    start = Cursor(pushes[0].backend_id, pushes[0].parent)
    end = pushes[-1].last
    by_first = {push.first: push for push in pushes}
    found: set[int] = set()
    last = start.seq
    async with aclosing(client.events(start, live=False)) as stream:
        async for batch in stream:
            for event in batch.events:
                push = by_first.get(event.seq_num)
                if push is not None and _own(client, event, push):
                    found.add(id(push))
            last = batch.cursor.seq
            if last >= end:
                break
    return found, last


def _own(client: StoreClient, event: Event, push: Push) -> bool:
    return (event.client_id, event.session_id, event.name) == (
        client.client_id,
        client.session_id,
        push.entries[0].name,
    )


def _server_head(error: dict[str, Any], push: Push) -> int:
    """The server's head from a ServerAheadError (its ``minimumExpectedNum``)."""
    head = error.get("minimumExpectedNum")
    if type(head) is not int or head == push.parent:
        raise ProtocolViolation(
            f"ServerAheadError for a push after {push.parent} with minimumExpectedNum {head!r}"
        )
    return head
