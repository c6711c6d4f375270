"""Fakes at the connection edge, for tests that drive the hub and the engine directly.

The hub writes to an :class:`gateway.hub.Outbox` (one per connection); :class:`RecordingOutbox`
stands in for the connection and records what it is handed. Everything behind it (hub, engine,
store) is real.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson

from gateway.protocol import NewEvent
from tests.helpers.timeouts import TIMEOUT_UNIT

_SEQ = re.compile(rb'"seqNum":(\d+)')
_TAG = re.compile(rb'"tag":"([^"]*)"')


def new_events(first: int, n: int, *, parent: int | None = None) -> list[NewEvent]:
    """``n`` chained engine-level events from ``seqNum = first`` (parent ``first - 1``)."""
    events = []
    prev = first - 1 if parent is None else parent
    for seq in range(first, first + n):
        events.append(
            NewEvent(seq=seq, parent=prev, data=b'{"seqNum":%d,"parentSeqNum":%d}' % (seq, prev))
        )
        prev = seq
    return events


class RecordingOutbox:
    """A hub ``Outbox`` that records the frames written to it.

    ``evictable=False`` (the default) makes an eviction an error: tests that do not expect one
    fail at the point where it happens. With ``evictable=True`` evictions are recorded.
    """

    def __init__(self, send_limit: int = 1 << 30, *, evictable: bool = False) -> None:
        self._send_limit = send_limit
        self.evictable = evictable
        self.frames: list[bytes] = []
        self.evictions: list[str] = []

    @property
    def send_limit(self) -> int:
        return self._send_limit

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    def evict(self, reason: str) -> None:
        if not self.evictable:
            raise AssertionError(f"evicted: {reason}")
        self.evictions.append(reason)

    def parsed(self) -> list[dict[str, Any]]:
        """Every frame written, parsed."""
        return [orjson.loads(frame) for frame in self.frames]

    def seqs(self) -> list[int]:
        """The ``seqNum`` of every event in every frame written, in order."""
        return [
            entry["eventEncoded"]["seqNum"]
            for frame in self.parsed()
            for item in frame["values"]
            for entry in item["batch"]
        ]


class WakingOutbox(RecordingOutbox):
    """A :class:`RecordingOutbox` that wakes whoever waits for its next frame; it reads
    ``seqNum`` and ``tag`` out of frames of any shape."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, frame: bytes) -> None:
        super().write(frame)
        self.changed.set()

    def seqs(self) -> list[int]:
        return [int(m) for frame in self.frames for m in _SEQ.findall(frame)]

    def tags(self) -> list[str]:
        return [m.decode() for frame in self.frames for m in _TAG.findall(frame)]

    async def until(self, head: int) -> None:
        """Wait until events 1..``head`` arrived, failing at once on a gap or a duplicate."""
        async with asyncio.timeout(20 * TIMEOUT_UNIT):
            while (seqs := self.seqs()) != list(range(1, head + 1)):
                assert seqs == list(range(1, len(seqs) + 1)), seqs  # no gap, no duplicate
                self.changed.clear()
                await self.changed.wait()
