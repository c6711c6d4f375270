"""The RPC wire format from the client's side (spec §4, §5): values, frame builders, frame
predicates and assertions on frames and ``PullResponse`` items."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

Frame = Any  # a parsed server frame: normally a dict, but a buggy server may send anything

PULL = "SyncWsRpc.Pull"
PUSH = "SyncWsRpc.Push"
HTTP_PULL = "SyncHttpRpc.Pull"
HTTP_PUSH = "SyncHttpRpc.Push"
HTTP_PING = "SyncHttpRpc.Ping"

NONE: dict[str, Any] = {"_tag": "None"}
NO_MORE: dict[str, Any] = {"_tag": "NoMore"}


# ---------------------------------------------------------------------------------------------
# Values


def new_store_id(prefix: str = "store") -> str:
    """A fresh storeId, so no test ever sees another test's log."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def some(value: Any) -> dict[str, Any]:
    """The Effect Schema encoding of ``Option.some(value)``."""
    return {"_tag": "Some", "value": value}


def cursor(backend_id: str, seq: int) -> dict[str, Any]:
    """A Pull cursor: events with ``seqNum > seq`` from the backend ``backend_id``."""
    return some({"backendId": backend_id, "eventSequenceNumber": seq})


def make_events(
    start_seq: int,
    n: int,
    parent: int | None = None,
    *,
    client_id: str = "client-test",
    session_id: str = "session-1",
    name: str = "v1.TestEvent",
    args_size: int = 0,
) -> list[dict[str, Any]]:
    """``n`` chained events starting at ``seqNum = start_seq``.

    The first event's ``parentSeqNum`` is ``parent`` (default ``start_seq - 1``); every later one
    chains to its predecessor. With ``args_size`` the args carry a padding string of that many
    bytes, so ``len(orjson.dumps(event))`` is roughly ``args_size`` plus ~150 bytes.
    """
    events = []
    prev = start_seq - 1 if parent is None else parent
    for seq in range(start_seq, start_seq + n):
        args: dict[str, Any] = {"id": f"{client_id}-{seq}", "n": seq}
        if args_size:
            args["pad"] = "x" * args_size
        events.append(
            {
                "name": name,
                "args": args,
                "seqNum": seq,
                "parentSeqNum": prev,
                "clientId": client_id,
                "sessionId": session_id,
            }
        )
        prev = seq
    return events


def request_frame(rid: str, tag: str, payload: Any) -> dict[str, Any]:
    """A client ``Request`` frame exactly as the 0.4.0 client shapes it (trace fields omitted)."""
    return {"_tag": "Request", "id": rid, "tag": tag, "payload": payload, "headers": []}


def events_of(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``eventEncoded`` of every event in a sequence of ``PullResponse`` items."""
    return [entry["eventEncoded"] for item in items for entry in item["batch"]]


def seqs_of(items: Iterable[dict[str, Any]]) -> list[int]:
    """The ``seqNum`` of every event in a sequence of ``PullResponse`` items."""
    return [event["seqNum"] for event in events_of(items)]


def is_exit(frame: Frame, rid: str | None = None) -> bool:
    return (
        isinstance(frame, dict)
        and frame.get("_tag") == "Exit"
        and (rid is None or frame.get("requestId") == rid)
    )


def is_chunk(frame: Frame, rid: str | None = None) -> bool:
    return (
        isinstance(frame, dict)
        and frame.get("_tag") == "Chunk"
        and (rid is None or frame.get("requestId") == rid)
    )


def for_request(frame: Frame, rid: str) -> bool:
    return isinstance(frame, dict) and frame.get("requestId") == rid


def assert_success(frame: Frame) -> Any:
    """Assert ``frame`` is an ``Exit`` with a ``Success`` and return its value (None if absent)."""
    assert is_exit(frame), f"expected an Exit frame, got {frame!r}"
    exit_ = frame["exit"]
    assert exit_.get("_tag") == "Success", f"expected Success, got {frame!r}"
    return exit_.get("value")


def assert_stream_success(frame: Frame) -> None:
    """A stream (Pull) success Exit: ``{"_tag":"Success"}``, ``"value": null`` also allowed."""
    assert_success(frame)
    assert frame["exit"].get("value") is None, f"stream Exit must carry no value: {frame!r}"


def assert_push_ok(frame: Frame) -> None:
    """A Push success Exit carries exactly the ``PushAck`` value ``{}`` (spec §4.4)."""
    value = assert_success(frame)
    assert value == {}, f"Push success value must be {{}}: {frame!r}"


def assert_fail(frame: Frame, error_tag: str) -> dict[str, Any]:
    """Assert ``frame`` is an ``Exit`` failing with the typed error ``error_tag``; return it."""
    assert is_exit(frame), f"expected an Exit frame, got {frame!r}"
    exit_ = frame["exit"]
    assert exit_.get("_tag") == "Failure", f"expected Failure, got {frame!r}"
    cause = exit_["cause"]
    assert cause.get("_tag") == "Fail", f"expected a Fail cause, got {frame!r}"
    error = cause["error"]
    assert error.get("_tag") == error_tag, f"expected {error_tag}, got {frame!r}"
    return error  # type: ignore[no-any-return]


def assert_die(frame: Frame) -> Any:
    """Assert ``frame`` is an ``Exit`` failing with a ``Die`` cause; return the defect."""
    assert is_exit(frame), f"expected an Exit frame, got {frame!r}"
    exit_ = frame["exit"]
    assert exit_.get("_tag") == "Failure", f"expected Failure, got {frame!r}"
    cause = exit_["cause"]
    assert cause.get("_tag") == "Die", f"expected a Die cause, got {frame!r}"
    assert "defect" in cause, f"a Die cause carries a defect: {frame!r}"
    return cause["defect"]


def assert_pull_response(item: Any, backend_id: str | None = None) -> None:
    """Check the shape of one ``PullResponse`` item (spec §5.3)."""
    assert isinstance(item, dict), f"PullResponse must be an object: {item!r}"
    assert isinstance(item.get("batch"), list), f"batch must be a list: {item!r}"
    page = item.get("pageInfo")
    assert isinstance(page, dict), f"pageInfo missing: {item!r}"
    assert page.get("_tag") in {"NoMore", "MoreKnown", "MoreUnknown"}, item
    if page["_tag"] == "MoreKnown":
        assert type(page.get("remaining")) is int, item
    assert isinstance(item.get("backendId"), str), f"backendId missing: {item!r}"
    assert item["backendId"], "backendId must be non-empty"
    if backend_id is not None:
        assert item["backendId"] == backend_id, item
    for entry in item["batch"]:
        assert isinstance(entry, dict), entry
        assert isinstance(entry.get("eventEncoded"), dict), entry
        metadata = entry.get("metadata")
        assert isinstance(metadata, dict), f"metadata must be an Option, got {entry!r}"
        assert metadata.get("_tag") in {"None", "Some"}, entry
        if metadata["_tag"] == "Some":
            value = metadata.get("value")
            assert isinstance(value, dict), entry
            assert value.get("_tag") == "SyncMessage.SyncMetadata", entry
            assert isinstance(value.get("createdAt"), str), entry
        for key in ("seqNum", "parentSeqNum"):
            assert type(entry["eventEncoded"].get(key)) is int, entry
