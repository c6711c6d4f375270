"""Fakes at the connection edge, for tests that drive the hub and the engine directly.

The hub writes to an :class:`gateway.hub.Outbox` (one per connection); :class:`RecordingOutbox`
stands in for the connection and records what it is handed. Everything behind it (hub, engine,
store) is real.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocol import NewEvent


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
