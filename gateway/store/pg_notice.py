"""What a PostgreSQL group commit announces, encoded and decoded (pure: no I/O).

A group's ``pg_notify`` payload is one JSON object, keys in this order::

    {"n": node, "c": [[store_id, head], ...],
     "e": [[store_id, backend_id, seq, parent, created_ms, length, seq, ...], ...],
     "d": [data, data, ...]}

``n`` names the writing node (it publishes its own pushes itself, so it skips its own
announcements by their first bytes, :func:`own_prefix`, without parsing them). ``c`` lists
every store written and its new head, exactly as before, so a node of the previous version
(which reads only ``c``) understands it. ``e`` and ``d``, present when at least one store's
events fit, carry the appended events of the stores whose events fit under
:data:`MAX_NOTICE`: per store its backendId (the log's identity: a node only publishes
carried events into the log it loaded, never across a reset), then four numbers per event,
whose ``length`` is the byte length of its data in ``d``. ``d`` holds the events' data as
they are stored: raw JSON, in the order ``e`` lists them, unchanged. The payload is
valid JSON (an old node parses it all), but a new node never parses the data: the header
ends at the first ``,"d":[`` (which no encoded string can contain: every quote inside one is
escaped), and the data are sliced from the bytes after it by their lengths, so they are
published byte for byte as written, without being decoded or encoded again.

A store whose events do not fit in a notification of its own is listed in ``c`` only (its
events are read from the log, as every announcement's were before); a group needs several
notifications when they do not fit in one. A commit notification of the previous version,
``{"c": [[s, h], ...]}`` (or ``{"s", "h"}``, see :mod:`gateway.store.pg_listen`), decodes
with no events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.protocol import NewEvent
from gateway.store import Carried, StoredEvent

__all__ = ["MAX_NOTICE", "Carried", "Commits", "Written", "decode", "encode", "own_prefix"]

# Bytes of one notification payload at most (PostgreSQL refuses 8000 and more).
MAX_NOTICE = 7900

_DATA = b',"d":['


@dataclass(slots=True)
class Written:
    """One store's appends written by a group, in order: ``(created_ms, events)`` each;
    ``backend_id`` None: announce its head only."""

    store_id: str
    backend_id: str | None
    batches: list[tuple[int, Sequence[NewEvent]]] = field(default_factory=list)

    @property
    def head(self) -> int:
        return self.batches[-1][1][-1].seq


@dataclass(slots=True)
class Commits:
    """A group's announcement: ``heads`` as listed (every store written), ``carried`` the
    events of the stores whose events it holds."""

    node: str | None
    heads: list[tuple[str, int]]
    carried: dict[str, Carried]


def own_prefix(node: str) -> str:
    """How ``node``'s own commit notifications begin."""
    return '{"n":' + orjson.dumps(node).decode() + ',"c":'


def _events_part(written: Written) -> tuple[bytes, list[bytes]] | None:
    """The store's entry in ``e`` and its data, None when it is announced by head only."""
    if written.backend_id is None:
        return None
    numbers: list[Any] = [written.store_id, written.backend_id]
    datas: list[bytes] = []
    last = -1
    for created_ms, events in written.batches:
        for e in events:
            if last >= 0 and e.seq != last + 1:
                return None  # not consecutive (cannot be, written): the log tells
            last = e.seq
            numbers += (e.seq, e.parent, created_ms, len(e.data))
            datas.append(e.data)
    return orjson.dumps(numbers), datas


def encode(node: str, written: Sequence[Written]) -> list[str]:
    """The notifications announcing ``written`` (each store once), each under the limit."""
    start = b'{"n":' + orjson.dumps(node) + b',"c":['
    # Fixed bytes of a notification with events: start + '],"e":[' + '],"d":[' + ']}'.
    fixed = len(start) + 7 + 7 + 2
    out: list[str] = []
    heads: list[bytes] = []
    metas: list[bytes] = []
    datas: list[bytes] = []
    size = fixed

    def flush() -> None:
        nonlocal heads, metas, datas, size
        if metas:
            body = (
                start
                + b",".join(heads)
                + b'],"e":['
                + b",".join(metas)
                + b"]"
                + _DATA
                + b",".join(datas)
                + b"]}"
            )
        else:
            body = start + b",".join(heads) + b"]}"
        out.append(body.decode())
        heads, metas, datas, size = [], [], [], fixed

    for w in written:
        head = orjson.dumps([w.store_id, w.head])
        part = _events_part(w)
        if part is not None:
            meta, data = part
            # Each listed item costs its bytes and a comma (one too many per list: slack).
            cost = len(head) + 1 + len(meta) + 1 + sum(len(d) for d in data) + len(data)
            if fixed + cost <= MAX_NOTICE:
                if size + cost > MAX_NOTICE:
                    flush()
                heads.append(head)
                metas.append(meta)
                datas += data
                size += cost
                continue
        if heads and size + len(head) + 1 > MAX_NOTICE:
            flush()
        heads.append(head)
        size += len(head) + 1
    if heads:
        flush()
    return out


def decode(payload: str | bytes) -> Commits | dict[str, Any]:
    """A commit notification as :class:`Commits`; any other notification as its JSON object.

    Raises:
        ValueError: the payload is malformed (its carried events included).
    """
    buf = payload.encode() if isinstance(payload, str) else payload
    cut = buf.find(_DATA)
    try:
        message = orjson.loads(buf if cut < 0 else buf[:cut] + b"}")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed notification: {exc}") from exc
    if not isinstance(message, dict):
        raise ValueError("malformed notification: not a JSON object")
    if "c" not in message:
        return message
    try:
        heads = [(str(s), int(h)) for s, h in message["c"]]
        node = message.get("n")
        carried: dict[str, Carried] = {}
        if cut >= 0:
            carried = _carried(buf, cut + len(_DATA), message["e"], dict(heads))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed commit notification: {exc}") from exc
    return Commits(None if node is None else str(node), heads, carried)


def _carried(buf: bytes, pos: int, entries: list[Any], heads: dict[str, int]) -> dict[str, Carried]:
    out: dict[str, Carried] = {}
    for entry in entries:
        store_id, backend_id = entry[0], entry[1]
        if (
            not isinstance(store_id, str)
            or not isinstance(backend_id, str)
            or len(entry) < 6
            or (len(entry) - 2) % 4
        ):
            raise ValueError("malformed carried events")
        events: list[StoredEvent] = []
        for k in range(2, len(entry), 4):
            seq, parent, created_ms, length = entry[k : k + 4]
            if length < 0 or (events and seq != events[-1].seq + 1):
                raise ValueError("malformed carried events")
            end = pos + length
            if buf[end : end + 1] != b"," and buf[end:] != b"]}":
                raise ValueError("malformed carried events: not matching their lengths")
            events.append(StoredEvent(seq, parent, created_ms, buf[pos:end]))
            pos = end + 1
        if heads.get(store_id) != events[-1].seq or store_id in out:
            raise ValueError("malformed carried events: not ending at their store's head")
        out[store_id] = Carried(backend_id, events)
    if pos != len(buf) - 1:
        raise ValueError("malformed carried events: not matching their lengths")
    return out
