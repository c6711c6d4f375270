"""A scripted one-store sync server for gateway.client's failure tests.

A real ``websockets`` server speaking the part of the protocol the client uses (non-live
Pull, Push with ``ServerAheadError``, Ping), whose pushes a test scripts: store a push and
drop the connection before the answer, store it later (a push the server was still
admitting when the connection went), refuse it, or let another writer's events land first.
The gateway never does these on demand, which is why they are scripted here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection

BACKEND = "backend-B"
OTHER = "someone-else"


@dataclass(frozen=True, slots=True)
class Do:
    """What the server does with one push (the default: answer it as a server would).

    Attributes:
        foreign_before: Events of another writer appended before the push is handled.
        store: Append the push (if it chains) and close the connection without answering.
        as_foreign: With ``store``: append it under another clientId (another writer's
            events at the same seqNums).
        later: Close the connection without answering, and append the push (if it chains)
            only when the next push arrives, before handling that one.
        drop: Close the connection without answering; never append the push.
        refuse: Answer ``UnknownError``.
    """

    foreign_before: int = 0
    store: bool = False
    as_foreign: bool = False
    later: bool = False
    drop: bool = False
    refuse: bool = False


Script = Callable[[int, list[dict[str, Any]]], Do | None]


class ScriptedStore:
    """The log of one store and a handler for ``websockets.serve``.

    ``script(n, batch)`` decides what to do with the n-th push received (0-based, across
    connections). ``holds[i]`` makes connection i hold its pushes until that many arrived,
    then handle them in order (several pushes in flight, for sure).
    """

    def __init__(self, script: Script | None = None, *, holds: tuple[int, ...] = ()) -> None:
        self.script = script
        self.holds = list(holds)
        self.entries: list[dict[str, Any]] = []
        self.pushes: list[list[dict[str, Any]]] = []
        self.connections = 0
        self._later: list[list[dict[str, Any]]] = []

    @property
    def head(self) -> int:
        return self.entries[-1]["seqNum"] if self.entries else 0

    def seqs(self) -> list[int]:
        return [entry["seqNum"] for entry in self.entries]

    def foreign(self, count: int) -> None:
        """Append ``count`` events of another writer."""
        for _ in range(count):
            head = self.head
            self.entries.append(
                {
                    "name": "other",
                    "args": {},
                    "seqNum": head + 1,
                    "parentSeqNum": head,
                    "clientId": OTHER,
                    "sessionId": "s",
                }
            )

    def _append(self, batch: list[dict[str, Any]]) -> bool:
        if batch[0]["parentSeqNum"] != self.head:
            return False
        self.entries += batch
        return True

    async def handler(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        hold = self.holds[index] if index < len(self.holds) else 1
        held: list[tuple[Any, list[dict[str, Any]]]] = []
        async for raw in ws:
            frame = orjson.loads(raw)
            tag = frame.get("_tag")
            if tag == "Ping":
                await ws.send('{"_tag":"Pong"}')
                continue
            if tag != "Request":
                continue
            rid, payload = frame["id"], frame["payload"]
            if frame["tag"] != "SyncWsRpc.Push":
                await self._pull(ws, rid, payload)
                continue
            held.append((rid, payload["batch"]))
            if len(held) < hold:
                continue
            hold = 1
            for rid, batch in held:
                if not await self._push(ws, rid, batch):
                    return
            held.clear()

    async def _push(self, ws: ServerConnection, rid: Any, batch: list[dict[str, Any]]) -> bool:
        """Handle one push; False when the connection was closed."""
        n = len(self.pushes)
        self.pushes.append(batch)
        for late in self._later:
            self._append(late)
        self._later.clear()
        do = (self.script(n, batch) if self.script is not None else None) or Do()
        self.foreign(do.foreign_before)
        if do.store or do.later or do.drop:
            if do.store:
                stored = [{**e, "clientId": OTHER} for e in batch] if do.as_foreign else batch
                self._append(stored)
            elif do.later:
                self._later.append(batch)
            await ws.close(1011, "lost ack")
            return False
        if do.refuse:
            refusal = {"_tag": "UnknownError", "cause": "refused by the script"}
            await ws.send(_exit(rid, {"_tag": "Failure", "cause": _fail(refusal)}))
            return True
        head = self.head
        if not self._append(batch):
            error: dict[str, Any] = {
                "_tag": "ServerAheadError",
                "minimumExpectedNum": head,
                "providedNum": batch[0]["parentSeqNum"],
            }
            await ws.send(_exit(rid, {"_tag": "Failure", "cause": _fail(error)}))
            return True
        await ws.send(_exit(rid, {"_tag": "Success", "value": {}}))
        return True

    async def _pull(self, ws: ServerConnection, rid: Any, payload: dict[str, Any]) -> None:
        cursor = payload["cursor"]
        if cursor["_tag"] == "Some" and cursor["value"]["backendId"] != BACKEND:
            mismatch = {
                "_tag": "BackendIdMismatchError",
                "expected": BACKEND,
                "received": cursor["value"]["backendId"],
            }
            await ws.send(_exit(rid, {"_tag": "Failure", "cause": _fail(mismatch)}))
            return
        after = cursor["value"]["eventSequenceNumber"] if cursor["_tag"] == "Some" else 0
        events = [{"eventEncoded": e} for e in self.entries if e["seqNum"] > after]
        for start in range(0, max(len(events), 1), 100):
            item = {
                "batch": events[start : start + 100],
                "pageInfo": {"_tag": "NoMore"},
                "backendId": BACKEND,
            }
            await ws.send(orjson.dumps({"_tag": "Chunk", "requestId": rid, "values": [item]}))
        await ws.send(_exit(rid, {"_tag": "Success", "value": None}))


def _fail(error: dict[str, Any]) -> dict[str, Any]:
    return {"_tag": "Fail", "error": error}


def _exit(rid: Any, exit_: dict[str, Any]) -> bytes:
    return orjson.dumps({"_tag": "Exit", "requestId": rid, "exit": exit_})
