"""Commits whose acknowledgement is lost with the connection: the client reads the log (and,
when the log cannot tell yet, sends the same push again) before it numbers anything anew, so
its events are written exactly once and in order (issue 12: "not lost or written twice when
an ack was in flight during a disconnect"). Also: a push refused for good fails its commits
and those queued behind it, without hanging anything.

The server is scripted (tests/client/scripted.py; real websockets server, real client): the
gateway never drops a connection between a COMMIT and its ack on purpose, so these moments
cannot be produced with it on demand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import serve

from gateway.client import RequestFailed, StoreClient, connect
from tests.client.scripted import OTHER, Do, Script, ScriptedStore
from tests.helpers.timeouts import TIMEOUT_UNIT

WITHIN = 10 * TIMEOUT_UNIT


class Served:
    """A scripted store on 127.0.0.1:0 and a way to connect clients to it."""

    def __init__(self, log: ScriptedStore, port: int) -> None:
        self.log = log
        self.port = port

    def client(self, **kwargs: Any) -> StoreClient:
        return connect(
            f"ws://127.0.0.1:{self.port}", "s", backoff_base=0.02, backoff_cap=0.05, **kwargs
        )


async def served(log: ScriptedStore) -> AsyncIterator[Served]:
    async with serve(log.handler, "127.0.0.1", 0) as server:
        yield Served(log, server.sockets[0].getsockname()[1])


def events(count: int, start: int = 0) -> list[tuple[str, Any]]:
    return [("e", {"n": n}) for n in range(start, start + count)]


def own_args(log: ScriptedStore, client_id: str) -> list[Any]:
    return [e["args"]["n"] for e in log.entries if e["clientId"] == client_id]


def first_push(do: Do) -> Script:
    return lambda n, batch: do if n == 0 else None


@pytest.mark.parametrize("foreign", [False, True], ids=["own-event-landed", "other-writer"])
async def test_commit_whose_ack_was_lost_is_written_once(foreign: bool) -> None:
    """Own events found at their seqNums after the drop: the commit returns them without a
    second push. Another writer's events there: the client pushes again on top of them."""
    log = ScriptedStore(first_push(Do(store=True, as_foreign=foreign)))
    async for server in served(log):
        async with server.client() as store:
            seqs = await asyncio.wait_for(store.commit_many(events(2, 1)), WITHIN)
    if foreign:
        # Dropped; the read that found the other writer's events taught the client the
        # head, so the second push lands on top of them at once.
        assert len(log.pushes) == 2
        assert seqs == [3, 4]
        assert [e["clientId"] for e in log.entries][2:] == [store.client_id] * 2
    else:
        assert len(log.pushes) == 1
        assert seqs == [1, 2]
    assert log.seqs() == list(range(1, len(log.entries) + 1))


async def test_a_push_still_being_admitted_when_the_connection_dropped_is_written_once() -> None:
    """The server had the push but had not written it when the connection went (it writes it
    a moment later). The log read right after the drop cannot tell: the client sends the
    same push again (same seqNums), which the server refuses because the first copy landed
    meanwhile; the log then shows the client's events, and the commit returns them. Pushing
    the events renumbered on top instead would have written them twice."""
    log = ScriptedStore(first_push(Do(later=True)))
    async for server in served(log):
        async with server.client() as store:
            seqs = await asyncio.wait_for(store.commit_many(events(2)), WITHIN)
    assert seqs == [1, 2]
    assert [(e["seqNum"], e["args"]) for e in log.entries] == [(1, {"n": 0}), (2, {"n": 1})]
    # The first copy, then the same push again (refused: the first copy had landed).
    assert [[e["seqNum"] for e in batch] for batch in log.pushes] == [[1, 2], [1, 2]]


async def test_a_lost_push_the_server_never_had_is_sent_again_unchanged() -> None:
    log = ScriptedStore(first_push(Do(drop=True)))
    async for server in served(log):
        async with server.client() as store:
            assert await asyncio.wait_for(store.commit_many(events(2)), WITHIN) == [1, 2]
    assert len(log.pushes) == 2
    assert log.seqs() == [1, 2]


async def test_pushes_in_flight_when_the_connection_drops_are_written_once_in_order() -> None:
    """Four pushes of 100 in flight (push_window=4): the first is acked, the second written
    but its ack lost with the connection, the last two never reach the server. After the
    reconnect the log shows the second; the last two are sent again unchanged."""
    log = ScriptedStore(lambda n, batch: Do(store=True) if n == 1 else None, holds=(4,))
    async for server in served(log):
        async with server.client(push_window=4) as store:
            seqs = await asyncio.wait_for(store.commit_many(events(400)), WITHIN)
    assert store.stats.most_in_flight == 4
    assert seqs == list(range(1, 401))
    assert log.seqs() == seqs
    assert own_args(log, store.client_id) == list(range(400))
    # The client sent six pushes; the server handled the first two, then the last two sent
    # again unchanged. The written one (after 100) was not pushed again.
    assert store.stats.pushes == 6
    assert [batch[0]["parentSeqNum"] for batch in log.pushes] == [0, 100, 200, 300]
    assert store.stats.rebases == 0


async def test_pushes_in_flight_when_another_writer_got_there_are_rebased_in_order() -> None:
    """Four pushes in flight; another writer's 30 events land before the second, then the
    connection drops. The log shows the second push was not written (another writer's
    events at its seqNums): it and the two behind it are numbered anew on top, in order."""
    log = ScriptedStore(
        lambda n, batch: Do(foreign_before=30, store=True) if n == 1 else None, holds=(4,)
    )
    async for server in served(log):
        async with server.client(push_window=4) as store:
            seqs = await asyncio.wait_for(store.commit_many(events(400)), WITHIN)
    # The second push no longer chained (its parent was 100, the head 130): not stored.
    assert seqs == list(range(1, 101)) + list(range(131, 431))
    assert log.seqs() == list(range(1, 431))
    assert own_args(log, store.client_id) == list(range(400))
    assert [e["clientId"] for e in log.entries[100:130]] == [OTHER] * 30
    assert store.stats.rebases == 1


async def test_a_refused_push_fails_its_commits_and_those_behind_it() -> None:
    """Three commits, three pushes in flight; the second push is refused (UnknownError): the
    first commit is written, the second and third fail with RequestFailed (the third was
    behind events that will never exist); nothing hangs, and a later commit is written."""
    log = ScriptedStore(lambda n, batch: Do(refuse=True) if n == 1 else None, holds=(3,))
    async for server in served(log):
        async with server.client(push_window=4) as store:
            calls = [
                asyncio.ensure_future(store.commit_many(events(100, start)))
                for start in (0, 100, 200)
            ]
            outcomes = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), WITHIN
            )
            later = await asyncio.wait_for(store.commit("e", {"n": 999}), WITHIN)
    assert outcomes[0] == list(range(1, 101))
    assert isinstance(outcomes[1], RequestFailed)
    assert isinstance(outcomes[2], RequestFailed)
    assert later == 101
    assert own_args(log, store.client_id) == [*range(100), 999]


async def test_pipelined_pushes_that_meet_another_writer_exactly_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Why pipelining is opt-in: another writer lands exactly 100 events before the first of
    two pipelined pushes. The first is refused; the second names the first's last seqNum
    (100) as its parent, which is now the head, and is accepted. The client writes the
    first push's events after it: nothing lost or duplicated, but out of order, reported."""
    log = ScriptedStore(lambda n, batch: Do(foreign_before=100) if n == 0 else None, holds=(2,))
    async for server in served(log):
        async with server.client(push_window=2) as store:
            with caplog.at_level(logging.WARNING, logger="gateway.client"):
                seqs = await asyncio.wait_for(store.commit_many(events(200)), WITHIN)
    assert seqs == list(range(201, 301)) + list(range(101, 201))
    assert own_args(log, store.client_id) == list(range(100, 200)) + list(range(100))
    assert log.seqs() == list(range(1, 301))
    assert store.stats.reordered == 100
    assert "were written before 100 of its events committed earlier" in caplog.text


async def test_without_pipelining_the_same_collision_keeps_the_order() -> None:
    log = ScriptedStore(lambda n, batch: Do(foreign_before=100) if n == 0 else None)
    async for server in served(log):
        async with server.client() as store:
            seqs = await asyncio.wait_for(store.commit_many(events(200)), WITHIN)
    assert seqs == list(range(101, 301))
    assert own_args(log, store.client_id) == list(range(200))
    assert store.stats.reordered == 0
