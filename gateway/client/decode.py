"""Decoding the server's frames for :mod:`gateway.client` (pure, no I/O): pull responses into
:class:`Batch` values checked for gaps and duplicates, failed ``Exit`` frames into exceptions."""

from __future__ import annotations

from typing import Any, NoReturn

from gateway import frames, protocol
from gateway.client.model import (
    BackendIdMismatch,
    Batch,
    Cursor,
    Event,
    ProtocolViolation,
    RequestFailed,
    Writer,
)


def pull_payload(store_id: str, cursor: Cursor | None, *, live: bool) -> dict[str, Any]:
    """The payload of a ``SyncWsRpc.Pull`` after ``cursor`` (None: from the start)."""
    position = None if cursor is None else protocol.Cursor(cursor.backend_id, cursor.seq)
    return frames.pull_payload(store_id, position, live=live)


def failure(frame: dict[str, Any]) -> dict[str, Any] | None:
    """The typed error of a failed Exit, None for a success."""
    exit_ = frame.get("exit")
    if not isinstance(exit_, dict):
        raise ProtocolViolation(f"Exit without an exit: {frame!r:.200}")
    if exit_.get("_tag") == "Success":
        return None
    cause = exit_.get("cause")
    if isinstance(cause, list) and cause:
        cause = cause[0]
    if (
        isinstance(cause, dict)
        and cause.get("_tag") == "Fail"
        and isinstance(cause.get("error"), dict)
    ):
        error: dict[str, Any] = cause["error"]
        return error
    return {"_tag": "Defect", "cause": cause}


def failure_error(error: dict[str, Any]) -> BackendIdMismatch | RequestFailed:
    """The exception for a typed error (:func:`failure`)."""
    if error.get("_tag") == "BackendIdMismatchError":
        return BackendIdMismatch(str(error.get("expected")), str(error.get("received")))
    return RequestFailed(f"the server failed the request: {error!r:.500}")


def raise_failure(error: dict[str, Any]) -> NoReturn:
    """Raise the exception for a typed error (:func:`failure`)."""
    raise failure_error(error)


def check_exit(frame: dict[str, Any]) -> None:
    """Raise when a stream's ``Exit`` is a failure."""
    error = failure(frame)
    if error is not None:
        raise_failure(error)


def decode_batch(value: Any, cursor: Cursor | None) -> Batch:
    """Decode one PullResponse, checking it continues ``cursor`` without a gap or duplicate."""
    try:
        backend_id = value["backendId"]
        events = list(map(decode_event, value["batch"]))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolViolation(f"malformed PullResponse ({exc!r}): {value!r:.200}") from None
    if not isinstance(backend_id, str):
        raise ProtocolViolation("PullResponse.backendId is not a string")
    last = cursor.seq if cursor is not None else 0
    for event in events:
        if event.seq_num <= last:
            raise ProtocolViolation(f"event {event.seq_num} does not come after {last}")
        last = event.seq_num
    return Batch(events, Cursor(backend_id, last))


def decode_event(entry: dict[str, Any]) -> Event:
    """One ``PullResponse.batch`` entry (``eventEncoded`` and ``metadata``).

    Runs once per event of every pull (about a third of a follower's CPU): one lookup per
    key, and :class:`Event` built with positional arguments (a frozen dataclass's
    ``__init__`` costs a third less without keywords; the order is its fields').
    """
    data = entry["eventEncoded"]
    seq = data["seqNum"]
    parent = data["parentSeqNum"]
    if type(seq) is not int or type(parent) is not int:
        raise ValueError("seqNum and parentSeqNum must be integers")
    metadata = entry.get("metadata")
    created_at = writer = None
    if isinstance(metadata, dict) and metadata.get("_tag") == "Some":
        value = metadata["value"]
        created_at = value.get("createdAt")
        signed = value.get("writer")
        if signed is not None:
            writer = Writer(signed["subject"], signed["instanceId"], signed["reason"])
    return Event(
        data["name"],
        data.get("args"),
        seq,
        parent,
        data["clientId"],
        data["sessionId"],
        created_at,
        writer,
    )
