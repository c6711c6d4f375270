"""gateway.client across a gateway restart (a ``gateway serve`` subprocess on a fixed port)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

from gateway.client import Batch, connect
from tests.helpers.daemon import Daemon
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import new_store_id

WITHIN = 20 * TIMEOUT_UNIT


async def test_follower_and_writer_survive_a_restart(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = await Daemon.start("--port", "0", "--data-dir", str(tmp_path))
    daemons.append(daemon)
    port = daemon.port
    url = f"ws://127.0.0.1:{port}"
    store_id = new_store_id()
    received: list[Batch] = []
    enough = asyncio.Event()
    target = 0

    async def follow() -> None:
        async with (
            connect(url, store_id, backoff_base=0.05) as follower,
            aclosing(follower.events()) as stream,
        ):
            async for batch in stream:
                received.append(batch)
                if sum(len(b.events) for b in received) >= target:
                    enough.set()

    async def reached(count: int) -> None:
        nonlocal target
        target = count
        if sum(len(b.events) for b in received) < count:
            enough.clear()
            await asyncio.wait_for(enough.wait(), WITHIN)

    async with connect(url, store_id, backoff_base=0.05, client_id="w") as writer:
        follower_task = asyncio.create_task(follow())
        try:
            assert await writer.commit_many([("e", {"n": n}) for n in range(40)]) == list(
                range(1, 41)
            )
            await reached(40)
            assert await daemon.stop() == 0
            daemon = await Daemon.start(
                "--port", str(port), "--data-dir", str(tmp_path), lines=daemon.lines
            )
            daemons.append(daemon)
            seqs = [
                await asyncio.wait_for(writer.commit("e", {"n": n}), WITHIN) for n in range(40, 60)
            ]
            assert seqs == list(range(41, 61))
            await reached(60)
        finally:
            follower_task.cancel()
            await asyncio.gather(follower_task, return_exceptions=True)
    events = [event for batch in received for event in batch.events]
    assert [event.seq_num for event in events] == list(range(1, 61))
    assert [event.args for event in events] == [{"n": n} for n in range(60)]
    assert received[-1].cursor.seq == 60
