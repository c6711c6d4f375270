"""The JSON-lines log format of ``store export`` and ``store import`` (pure, no I/O).

One event per line, as LiveStore encodes it (``name``, ``args``, ``seqNum``,
``parentSeqNum``, ``clientId``, ``sessionId``), then ``createdAt`` (ISO 8601, when the
server accepted it), the ``backendId`` of the log and ``writer`` (who pushed it:
``{"subject", "instanceId", "reason", "receivedAt"}``, or null when unknown).
:class:`ImportReader` checks lines one at a time (a chain from seqNum 1, one backendId) and
turns them back into stored events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

from gateway.frames import iso_millis
from gateway.protocol import NewEvent
from gateway.store import Writer

# Longest line accepted on import (an event; a push holds at most ~900 KB of them).
MAX_LINE: Final = 1024 * 1024
_EVENT_KEYS: Final = ("name", "args", "seqNum", "parentSeqNum", "clientId", "sessionId")


def export_line(
    data: bytes, created_ms: int, backend_id: str, writer: Writer | None = None
) -> bytes:
    """One line for a stored event (``data``: the event as its client pushed it), with who
    pushed it (``writer``: null for events stored before attribution existed)."""
    event = orjson.loads(data)
    record: dict[str, Any] = {key: event.get(key) for key in _EVENT_KEYS}
    created = iso_millis(created_ms)
    record["createdAt"] = created
    record["backendId"] = backend_id
    record["writer"] = None if writer is None else writer_json(writer, created)
    return orjson.dumps(record) + b"\n"


def writer_json(writer: Writer, received_at: str) -> dict[str, str]:
    """Attribution as ``gateway tail`` and exports show it."""
    return {
        "subject": writer.subject,
        "instanceId": writer.instance_id,
        "reason": writer.reason,
        "receivedAt": received_at,
    }


class LineError(ValueError):
    """A line that cannot be imported; the message names it."""


@dataclass(frozen=True, slots=True)
class ImportedEvent:
    event: NewEvent
    created_ms: int
    writer: Writer | None = None


class ImportReader:
    """Checks an import's lines in order; :meth:`read` returns each line's event."""

    def __init__(self, backend_id: str | None = None, *, now_ms: int) -> None:
        self.backend_id = backend_id
        """The log's backendId: given, or taken from the first line that names one."""
        self.head = 0
        self.lines = 0
        self._now_ms = now_ms

    def read(self, raw: bytes) -> ImportedEvent | None:
        """The event of the next line (None for a blank line).

        Raises:
            LineError: the line is not JSON, lacks a field, breaks the chain or names
                another backendId.
        """
        self.lines += 1
        where = f"line {self.lines}"
        if not raw.strip():
            return None
        if len(raw) > MAX_LINE:
            raise LineError(f"{where}: longer than {MAX_LINE} bytes")
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise LineError(f"{where}: not JSON") from None
        if not isinstance(record, dict):
            raise LineError(f"{where}: not a JSON object")
        for key in ("name", "clientId", "sessionId"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise LineError(f"{where}: {key} must be a non-empty string")
        if "args" not in record:
            raise LineError(f"{where}: args is missing")
        seq, parent = record.get("seqNum"), record.get("parentSeqNum")
        if not _whole(seq) or not _whole(parent):
            raise LineError(f"{where}: seqNum and parentSeqNum must be integers")
        if seq != self.head + 1 or parent != self.head:
            raise LineError(
                f"{where}: seqNum {seq} (parent {parent}) does not follow {self.head}: "
                "the log must be a chain from seqNum 1"
            )
        backend = record.get("backendId")
        if backend is not None:
            if not isinstance(backend, str) or not backend:
                raise LineError(f"{where}: backendId must be a non-empty string")
            if self.backend_id is None:
                self.backend_id = backend
            elif backend != self.backend_id:
                raise LineError(f"{where}: backendId {backend!r} is not {self.backend_id!r}")
        created_ms = _created_ms(record.get("createdAt"), where, self._now_ms)
        writer = _writer(record.get("writer"), where)
        self.head = int(seq)
        data = orjson.dumps({key: record[key] for key in _EVENT_KEYS})
        return ImportedEvent(NewEvent(self.head, self.head - 1, data), created_ms, writer)


def _writer(value: object, where: str) -> Writer | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(value.get(key), str) for key in ("subject", "instanceId", "reason")
    ):
        raise LineError(f"{where}: writer must hold subject, instanceId and reason strings")
    return Writer(value["subject"], value["instanceId"], value["reason"])


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _created_ms(value: object, where: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, str):
        raise LineError(f"{where}: createdAt must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise LineError(f"{where}: createdAt {value!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise LineError(f"{where}: createdAt {value!r} has no time zone")
    return int(parsed.timestamp() * 1000)
