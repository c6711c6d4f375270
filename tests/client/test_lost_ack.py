"""A commit whose acknowledgement is lost with the connection: the client reads the log before
pushing again, so its events are written exactly once (issue 12: "not lost or written twice
when an ack was in flight during a disconnect").

The server here is a minimal scripted one (real websockets server, real client): the
gateway never drops a connection between its COMMIT and the ack on purpose, so the moment
cannot be produced with it on demand.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway.client import connect
from tests.helpers.timeouts import TIMEOUT_UNIT

BACKEND = "backend-B"


class ScriptedLog:
    """A one-store log whose first push is stored and then its connection dropped unacked."""

    def __init__(self, *, foreign: bool) -> None:
        # foreign: what lands at the seqNum is another writer's event, not the client's.
        self.foreign = foreign
        self.entries: list[dict[str, Any]] = []
        self.pushes = 0

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            frame = orjson.loads(raw)
            if frame.get("_tag") != "Request":
                continue
            rid, payload = frame["id"], frame["payload"]
            if frame["tag"] == "SyncWsRpc.Push":
                self.pushes += 1
                batch = payload["batch"]
                if self.pushes == 1:
                    if self.foreign:
                        batch = [{**event, "clientId": "someone-else"} for event in batch]
                    self.entries += batch
                    await ws.close(1011, "lost ack")
                    return
                head = self.entries[-1]["seqNum"] if self.entries else 0
                if batch[0]["parentSeqNum"] != head:
                    error = {"_tag": "ServerAheadError", "minimumExpectedNum": head}
                    error["providedNum"] = batch[0]["parentSeqNum"]
                    await ws.send(_exit(rid, {"_tag": "Failure", "cause": _fail(error)}))
                    continue
                self.entries += batch
                await ws.send(_exit(rid, {"_tag": "Success", "value": {}}))
                continue
            cursor = payload["cursor"]
            if cursor["_tag"] == "Some" and cursor["value"]["backendId"] != BACKEND:
                mismatch = {
                    "_tag": "BackendIdMismatchError",
                    "expected": BACKEND,
                    "received": cursor["value"]["backendId"],
                }
                await ws.send(_exit(rid, {"_tag": "Failure", "cause": _fail(mismatch)}))
                continue
            after = cursor["value"]["eventSequenceNumber"] if cursor["_tag"] == "Some" else 0
            batch = [{"eventEncoded": e} for e in self.entries if e["seqNum"] > after]
            item = {"batch": batch, "pageInfo": {"_tag": "NoMore"}, "backendId": BACKEND}
            await ws.send(orjson.dumps({"_tag": "Chunk", "requestId": rid, "values": [item]}))
            await ws.send(_exit(rid, {"_tag": "Success", "value": None}))


def _fail(error: dict[str, Any]) -> dict[str, Any]:
    return {"_tag": "Fail", "error": error}


def _exit(rid: Any, exit_: dict[str, Any]) -> bytes:
    return orjson.dumps({"_tag": "Exit", "requestId": rid, "exit": exit_})


@pytest.mark.parametrize("foreign", [False, True], ids=["own-event-landed", "other-writer"])
async def test_commit_whose_ack_was_lost_is_written_once(foreign: bool) -> None:
    """Own events found at their seqNums after the drop: the commit returns them without a
    second push. Another writer's events there: the client pushes again on top of them."""
    log = ScriptedLog(foreign=foreign)
    async with serve(log.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with connect(url, "s", backoff_base=0.02, backoff_cap=0.05) as store:
            seqs = await asyncio.wait_for(
                store.commit_many([("e", {"n": 1}), ("e", {"n": 2})]), 10 * TIMEOUT_UNIT
            )
    if foreign:
        # Dropped; the read that found the other writer's events taught the client the
        # head, so the second push lands on top of them at once.
        assert log.pushes == 2
        assert seqs == [3, 4]
        assert [e["clientId"] for e in log.entries][2:] == [store.client_id] * 2
    else:
        assert log.pushes == 1
        assert seqs == [1, 2]
    assert [e["seqNum"] for e in log.entries] == list(range(1, len(log.entries) + 1))
