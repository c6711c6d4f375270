"""gateway.client's commit queue against a real gateway: calls from many tasks are written in
call order and batched; concurrent writers converge; pipelined pushes (``push_window``);
events that cannot be sent fail before anything is queued."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.client import Event, StoreClient, connect
from tests.helpers.clients import RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import new_store_id

WITHIN = 20 * TIMEOUT_UNIT


def client(gateway: GatewayHarness, store_id: str, **kwargs: Any) -> StoreClient:
    return connect(f"ws://{gateway.base}", store_id, backoff_base=0.05, **kwargs)


async def read_log(gateway: GatewayHarness, store_id: str) -> list[Event]:
    async with client(gateway, store_id) as reader:
        return [e async for batch in reader.events(live=False) for e in batch.events]


def check_log(log: list[Event]) -> None:
    """Gap-free and chained."""
    assert [e.seq_num for e in log] == list(range(1, len(log) + 1))
    assert [e.parent_seq_num for e in log] == list(range(len(log)))


@pytest.mark.parametrize("window", [1, 4])
async def test_commits_from_many_tasks_get_consecutive_seq_nums_in_call_order(
    make_gateway: MakeGateway, window: int
) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    calls = 450
    async with client(gateway, store_id, push_window=window) as store:
        tasks = [asyncio.ensure_future(store.commit("e", {"n": n})) for n in range(calls)]
        seqs = await asyncio.wait_for(asyncio.gather(*tasks), WITHIN)
        stats = store.stats
    assert seqs == list(range(1, calls + 1))
    log = await read_log(gateway, store_id)
    check_log(log)
    assert [e.args["n"] for e in log] == list(range(calls))
    # Batched: 100 events a push, not one push per call.
    assert stats.pushes == 5
    assert stats.most_in_flight == min(window, 5)


async def test_commit_many_calls_keep_their_events_together_and_in_order(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    async with client(gateway, store_id, push_window=4) as store:
        sizes = [1, 250, 3, 100, 99, 7]
        calls = [
            store.commit_many([("e", {"call": i, "k": k}) for k in range(size)])
            for i, size in enumerate(sizes)
        ]
        results = await asyncio.wait_for(asyncio.gather(*calls), WITHIN)
    start = 1
    for size, seqs in zip(sizes, results, strict=True):
        assert seqs == list(range(start, start + size))
        start += size
    log = await read_log(gateway, store_id)
    check_log(log)
    expected = [{"call": i, "k": k} for i, size in enumerate(sizes) for k in range(size)]
    assert [e.args for e in log] == expected


async def raw_writer(gateway: GatewayHarness, store_id: str, count: int) -> list[int]:
    """Push ``count`` single events the way a minimal client does: numbered after the head
    it knows, renumbered on ServerAheadError. Returns their seqNums."""
    raw = await RpcClient.open(gateway.ws_url(store_id), store_id)
    written: list[int] = []
    head = 0
    try:
        while len(written) < count:
            event = {
                "name": "raw",
                "args": {"n": len(written)},
                "seqNum": head + 1,
                "parentSeqNum": head,
                "clientId": "raw",
                "sessionId": "raw",
            }
            answer = await raw.push([event])
            exit_ = answer["exit"]
            if exit_["_tag"] == "Success":
                head += 1
                written.append(head)
                await asyncio.sleep(0)  # let the others in between
                continue
            error = exit_["cause"]["error"]
            assert error["_tag"] == "ServerAheadError", answer
            head = error["minimumExpectedNum"]
    finally:
        await raw.close()
    return written


async def test_concurrent_writers_converge_each_in_its_own_order(
    make_gateway: MakeGateway,
) -> None:
    """Two clients, each committing from many tasks and in bulk, and a raw pusher, on one
    store: the log has every event once, no gap, and each writer's events in its order."""
    gateway = await make_gateway()
    store_id = new_store_id()

    async def write(name: str) -> tuple[list[list[int]], int]:
        async with client(gateway, store_id, client_id=name) as store:
            calls = []
            for i in range(40):
                if i % 10 == 0:
                    items = [(name, {"i": i, "k": k}) for k in range(120)]
                else:
                    items = [(name, {"i": i, "k": 0})]
                calls.append(asyncio.ensure_future(store.commit_many(items)))
                if i % 7 == 0:
                    await asyncio.sleep(0)  # interleave with the other writers
            results = await asyncio.gather(*calls)
            return results, store.stats.rebases

    (a, rebases_a), (b, rebases_b), raw = await asyncio.wait_for(
        asyncio.gather(write("a"), write("b"), raw_writer(gateway, store_id, 60)), WITHIN
    )
    log = await read_log(gateway, store_id)
    check_log(log)
    for name, results in (("a", a), ("b", b)):
        own = [e for e in log if e.client_id == name]
        expected = [{"i": i, "k": k} for i in range(40) for k in range(120 if i % 10 == 0 else 1)]
        assert [e.args for e in own] == expected, f"{name}'s events are not in call order"
        assert [seq for seqs in results for seq in seqs] == [e.seq_num for e in own]
    assert raw == [e.seq_num for e in log if e.client_id == "raw"]
    assert [e.args["n"] for e in log if e.client_id == "raw"] == list(range(60))
    assert rebases_a + rebases_b > 0, "the writers never collided: the test tested nothing"


async def test_a_sole_writer_pipelines_full_pushes(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    async with client(gateway, store_id, push_window=4) as store:
        seqs = await asyncio.wait_for(
            store.commit_many([("e", {"n": n}) for n in range(1000)]), WITHIN
        )
        stats = store.stats
    assert seqs == list(range(1, 1001))
    assert stats.most_in_flight >= 2
    assert (stats.pushes, stats.rebases, stats.reordered) == (10, 0, 0)
    log = await read_log(gateway, store_id)
    check_log(log)
    assert [e.args["n"] for e in log] == list(range(1000))


async def test_pipelining_writers_lose_and_duplicate_nothing(make_gateway: MakeGateway) -> None:
    """Two pipelining writers on one store (the trade-off ``push_window`` documents): every
    event is written once; whatever order a client lost, ``stats.reordered`` reports."""
    gateway = await make_gateway()
    store_id = new_store_id()

    async def write(name: str) -> tuple[list[list[int]], int]:
        async with client(gateway, store_id, client_id=name, push_window=4) as store:
            calls = [
                store.commit_many([(name, {"n": k * 100 + j}) for j in range(100)])
                for k in range(20)
            ]
            results = await asyncio.gather(*calls)
            return results, store.stats.reordered

    (a, reordered_a), (b, reordered_b) = await asyncio.wait_for(
        asyncio.gather(write("a"), write("b")), WITHIN
    )
    log = await read_log(gateway, store_id)
    check_log(log)
    for name, results, reordered in (("a", a, reordered_a), ("b", b, reordered_b)):
        own = [e for e in log if e.client_id == name]
        assert sorted(e.args["n"] for e in own) == list(range(2000))
        by_seq = {e.seq_num: e.args["n"] for e in own}
        assert [by_seq[seq] for seqs in results for seq in seqs] == list(range(2000))
        in_order = [e.args["n"] for e in own] == list(range(2000))
        assert in_order == (reordered == 0)


async def test_events_that_cannot_be_sent_fail_before_anything_is_queued(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway()
    store_id = new_store_id()
    async with client(gateway, store_id) as store:
        with pytest.raises(TypeError):
            await store.commit("e", {"not json": object()})
        with pytest.raises(TypeError, match="name must be a str"):
            await store.commit_many([(7, {})])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="900,000-byte limit"):
            await store.commit_many([("small", {}), ("big", {"pad": "x" * 900_000})])
        assert await store.commit("e", {"n": 1}) == 1
    assert [e.name for e in await read_log(gateway, store_id)] == ["e"]
