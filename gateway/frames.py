"""Outbound frames of the sync protocol, built as ``bytes`` (pure, no I/O).

The hot path (live fan-out, catch-up) splices already-encoded events instead of
re-serialising them: an event is encoded once when it is pushed, stored as those bytes, and
copied verbatim into every ``PullResponse`` that carries it. Frames a client sends
(:func:`request_frame`, :func:`ack_frame`) are here too, for ``gateway tail``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson

from gateway.errors import BackendIdMismatch, RpcFailure, ServerAhead, UnknownFailure
from gateway.protocol import (
    MAX_EVENTS_PER_ITEM,
    MAX_ITEM_BYTES,
    MAX_SAFE_INTEGER,
    Cursor,
    RequestId,
    dumps,
)

PONG: Final = b'{"_tag":"Pong"}'
NO_MORE: Final = b'{"_tag":"NoMore"}'
_META_PREFIX: Final = b'{"_tag":"Some","value":{"_tag":"SyncMessage.SyncMetadata","createdAt":"'
_META_SUFFIX: Final = b'"}}'


# The formatted second of the last timestamp: every push formats one, mostly in the same second.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00.")


def iso_millis(created_ms: int) -> str:
    """ISO 8601 with milliseconds and ``Z``, as the reference's ``createdAt`` (spec §5.3)."""
    global _last_second
    second, millis = divmod(created_ms, 1000)
    cached, prefix = _last_second
    if second != cached:
        moment = datetime.fromtimestamp(second, tz=UTC)
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (second, prefix)
    return f"{prefix}{millis:03d}Z"


def metadata(created_ms: int, writer: bytes | None = None) -> bytes:
    """An event's ``metadata``: its ``createdAt``, and for services (bypass sessions) who
    pushed it (``writer``: a JSON object, already encoded). LiveStore clients never get it."""
    if writer is None:
        return _META_PREFIX + iso_millis(created_ms).encode() + _META_SUFFIX
    return _META_PREFIX + iso_millis(created_ms).encode() + b'","writer":' + writer + b"}}"


def event_entry(data: bytes, meta: bytes) -> bytes:
    """One element of ``PullResponse.batch``: the stored event plus its metadata."""
    return b'{"eventEncoded":' + data + b',"metadata":' + meta + b"}"


def more_known(remaining: int) -> bytes:
    return b'{"_tag":"MoreKnown","remaining":' + str(remaining).encode() + b"}"


def pull_item(entries: list[bytes], page_info: bytes, backend_id_json: bytes) -> bytes:
    """A serialised ``PullResponse`` (spec §5.3)."""
    return (
        b'{"batch":['
        + b",".join(entries)
        + b'],"pageInfo":'
        + page_info
        + b',"backendId":'
        + backend_id_json
        + b"}"
    )


# Bytes of a PullResponse around its entries, with the longest pageInfo we emit.
_ITEM_OVERHEAD: Final = len(pull_item([], more_known(MAX_SAFE_INTEGER), b'""'))


def split_pages(entries: list[bytes], backend_id_json: bytes) -> list[list[bytes]]:
    """Split entries into pages of at most 100 events and 900,000 serialised bytes.

    A single entry larger than the byte limit still gets a page of its own (spec §15.3)
    rather than failing the pull.
    """
    pages: list[list[bytes]] = []
    current: list[bytes] = []
    budget = MAX_ITEM_BYTES - _ITEM_OVERHEAD - len(backend_id_json)
    size = 0
    for entry in entries:
        cost = len(entry) + 1  # the separating comma
        if current and (len(current) >= MAX_EVENTS_PER_ITEM or size + cost > budget):
            pages.append(current)
            current = []
            size = 0
        current.append(entry)
        size += cost
    if current:
        pages.append(current)
    return pages


def request_id_json(request_id: RequestId) -> bytes:
    """The id as the client sent it, with its JSON type: a string (Effect 3) or a number
    (Effect 4); an Effect 4 client drops a reply whose id has the other type."""
    return orjson.dumps(request_id)


def chunk_prefix(rid_json: bytes) -> bytes:
    """The per-request start of a Chunk frame; the rest (:func:`chunk_tail`) can be shared."""
    return b'{"_tag":"Chunk","requestId":' + rid_json


def chunk_tail(item: bytes) -> bytes:
    return b',"values":[' + item + b"]}"


def exit_success_void(rid_json: bytes) -> bytes:
    # Effect 4 requires the value key; Effect 3 accepts null: one form for both.
    return b'{"_tag":"Exit","requestId":' + rid_json + b',"exit":{"_tag":"Success","value":null}}'


def exit_success(rid_json: bytes, value: bytes) -> bytes:
    return (
        b'{"_tag":"Exit","requestId":'
        + rid_json
        + b',"exit":{"_tag":"Success","value":'
        + value
        + b"}}"
    )


PUSH_ACK: Final = b"{}"
HTTP_PONG: Final = b'{"_tag":"SyncMessage.Pong"}'


def _exit_failure(rid_json: bytes, reason: dict[str, Any]) -> bytes:
    """A failed Exit. Its cause is one reason object for Effect 3 clients (string ids) and an
    array of reasons for Effect 4 clients (numeric ids): each generation rejects the other's."""
    cause = dumps(reason) if rid_json[:1] == b'"' else b"[" + dumps(reason) + b"]"
    return (
        b'{"_tag":"Exit","requestId":'
        + rid_json
        + b',"exit":{"_tag":"Failure","cause":'
        + cause
        + b"}}"
    )


def failure_json(failure: RpcFailure) -> dict[str, Any]:
    """The wire form of a typed failure: a member of the RPC's error union (spec §4.4)."""
    if isinstance(failure, ServerAhead):
        return {
            "_tag": "ServerAheadError",
            "minimumExpectedNum": failure.minimum_expected,
            "providedNum": failure.provided,
        }
    if isinstance(failure, BackendIdMismatch):
        return {
            "_tag": "BackendIdMismatchError",
            "expected": failure.expected,
            "received": failure.received,
        }
    assert isinstance(failure, UnknownFailure)
    return {
        "_tag": "UnknownError",
        "cause": {"name": "Error", "message": failure.message},
        "note": failure.note,
    }


def exit_fail(rid_json: bytes, failure: RpcFailure) -> bytes:
    """A typed failure of one request."""
    return _exit_failure(rid_json, {"_tag": "Fail", "error": failure_json(failure)})


def exit_die(rid_json: bytes, defect: str) -> bytes:
    """A defect for one request (malformed payload, unknown tag)."""
    return _exit_failure(rid_json, {"_tag": "Die", "defect": defect})


def request_frame(request_id: RequestId, tag: str, payload: dict[str, Any]) -> bytes:
    """A client's ``Request`` frame (what ``gateway tail`` sends)."""
    return dumps({"_tag": "Request", "id": request_id, "tag": tag, "payload": payload})


def pull_payload(store_id: str, cursor: Cursor | None, *, live: bool) -> dict[str, Any]:
    """The payload of a Pull request from ``cursor`` (None: from the start)."""
    option: dict[str, Any] = {"_tag": "None"}
    if cursor is not None:
        value = {"backendId": cursor.backend_id, "eventSequenceNumber": cursor.seq}
        option = {"_tag": "Some", "value": value}
    return {"storeId": store_id, "live": live, "cursor": option}


def ack_frame(request_id: RequestId) -> bytes:
    return b'{"_tag":"Ack","requestId":' + request_id_json(request_id) + b"}"


def defect(message: str) -> bytes:
    return orjson.dumps({"_tag": "Defect", "defect": {"name": "Error", "message": message}})
