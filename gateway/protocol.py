"""Wire protocol of ``@livestore/sync-cf`` 0.4.0: decoding what clients send, pure, no I/O.

Inbound frames are Effect-RPC JSON messages (spec §4); they are decoded into small frozen
dataclasses, and Pull / Push payloads into typed requests. What the server sends is built by
:mod:`gateway.frames`.

Errors (defined in :mod:`gateway.errors`): a :class:`FrameError` (the frame is unusable: not
JSON, not an object, a numeric id) is answered with a connection-level ``Defect`` frame; a
:class:`PayloadError` (a ``Request`` whose payload does not match the RPC schema) with
``Exit`` / ``Die`` for that request only; a typed :class:`RpcFailure` with ``Exit`` / ``Fail``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.errors import FrameError, PayloadError

# Limits of the 0.4.0 protocol (spec §9).
MAX_EVENTS_PER_ITEM: Final = 100
MAX_ITEM_BYTES: Final = 900_000
MAX_SAFE_INTEGER: Final = 2**53 - 1

TAG_WS_PULL: Final = "SyncWsRpc.Pull"
TAG_WS_PUSH: Final = "SyncWsRpc.Push"
TAG_HTTP_PULL: Final = "SyncHttpRpc.Pull"
TAG_HTTP_PUSH: Final = "SyncHttpRpc.Push"
TAG_HTTP_PING: Final = "SyncHttpRpc.Ping"


# ---------------------------------------------------------------------------------------------
# JSON with JavaScript's strings
#
# JavaScript strings may hold lone UTF-16 surrogates, which JSON.stringify writes as escapes
# ("\ud800"). orjson refuses them; the standard library keeps them. Such rare documents take
# the slow path both ways, so an app's data round-trips exactly.


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ``orjson.JSONDecodeError`` (a ValueError) when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(data, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            raise exc from None


def dumps(value: Any) -> bytes:
    """Serialise JSON; ASCII-escaped (valid UTF-8) when it holds lone surrogates."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Inbound messages


RequestId = str | int
"""A request id as the client sent it: a decimal string (Effect 3, LiveStore 0.4.0) or a
number (Effect 4, LiveStore's next release). Replies echo it with its JSON type."""


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    tag: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ack:
    request_id: RequestId


@dataclass(frozen=True, slots=True)
class Interrupt:
    request_id: RequestId


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message the server tolerates without answering (Eof, Pong, unknown ``_tag``)."""

    tag: str


Inbound = Request | Ack | Interrupt | Ping | Ignored

PING: Final = Ping()


def _request_id(message: dict[str, Any], key: str) -> RequestId:
    value = message.get(key)
    if isinstance(value, str):
        return value
    # Effect 4's RpcClient numbers its requests (0, 1, ...): the id's JSON type tells the
    # client's generation, and replies must keep it.
    if type(value) is int and 0 <= value <= MAX_SAFE_INTEGER:
        return value
    raise FrameError(
        f"{message.get('_tag')}.{key} must be a string or a safe integer, got {_kind(value)}"
    )


def effect4(request_id: RequestId) -> bool:
    """Whether a request comes from an Effect 4 client (a numeric id)."""
    return type(request_id) is int


def decode_frame(data: bytes | str) -> Inbound:
    """Decode one WebSocket text frame (or an HTTP body) into a message."""
    try:
        message = loads(data)
    except ValueError as exc:
        raise FrameError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError(f"frame must be a JSON object, got {_kind(message)}")
    tag = message.get("_tag")
    if tag == "Ping":
        return PING
    if tag == "Request":
        rpc = message.get("tag")
        if not isinstance(rpc, str):
            raise FrameError("Request.tag must be a string")
        request_id = _request_id(message, "id")
        payload = message.get("payload")
        if not isinstance(payload, dict):
            # The request is addressable, so fail only it.
            return Request(request_id, rpc, {"__invalid__": _kind(payload)})
        return Request(request_id, rpc, payload)
    if tag == "Ack":
        return Ack(_request_id(message, "requestId"))
    if tag == "Interrupt":
        return Interrupt(_request_id(message, "requestId"))
    if isinstance(tag, str):
        return Ignored(tag)
    raise FrameError("frame has no string _tag")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# RPC payloads


@dataclass(frozen=True, slots=True)
class Cursor:
    backend_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class PullRequest:
    store_id: str
    live: bool
    cursor: Cursor | None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A pushed event, validated, with its canonical JSON encoding."""

    seq: int
    parent: int
    data: bytes
    # The event's name and its decoded ``args`` (None when absent), for the push rules, the
    # event schemas and the hooks (both are also inside ``data``).
    name: str = ""
    args: Any = None


@dataclass(frozen=True, slots=True)
class PushRequest:
    store_id: str
    batch: list[NewEvent]
    backend_id: str | None


def _check_payload(payload: dict[str, Any]) -> None:
    if "__invalid__" in payload:
        raise PayloadError(
            f"Expected an object for the request payload, got {payload['__invalid__']}"
        )


def _store_id(payload: dict[str, Any]) -> str:
    store_id = payload.get("storeId")
    if not isinstance(store_id, str):
        raise PayloadError(f'["storeId"]: expected string, got {_kind(store_id)}')
    return store_id


def _safe_int(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAFE_INTEGER:
        return value
    raise PayloadError(f"{where}: expected a non-negative safe integer, got {_kind(value)}")


def _option(value: object, where: str) -> tuple[bool, object]:
    """Decode an Effect ``Option`` (spec §4.3); returns (is_some, value)."""
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected an Option, got {_kind(value)}")
    tag = value.get("_tag")
    if tag == "None":
        return False, None
    if tag == "Some":
        if "value" not in value:
            raise PayloadError(f'{where}["value"] is missing')
        return True, value["value"]
    raise PayloadError(f'{where}["_tag"]: expected "None" or "Some"')


def decode_pull(payload: dict[str, Any], *, http: bool = False) -> PullRequest:
    """Decode a ``SyncWsRpc.Pull`` / ``SyncHttpRpc.Pull`` payload (spec §5.1)."""
    _check_payload(payload)
    store_id = _store_id(payload)
    if http:
        live = False
    else:
        live_value = payload.get("live")
        if not isinstance(live_value, bool):
            raise PayloadError(f'["live"]: expected boolean, got {_kind(live_value)}')
        live = live_value
    if "cursor" not in payload:
        raise PayloadError('["cursor"] is missing')
    is_some, value = _option(payload["cursor"], '["cursor"]')
    cursor = None
    if is_some:
        if not isinstance(value, dict):
            raise PayloadError(f'["cursor"]["value"]: expected object, got {_kind(value)}')
        backend_id = value.get("backendId")
        if not isinstance(backend_id, str):
            raise PayloadError('["cursor"]["value"]["backendId"]: expected string')
        seq = _safe_int(
            value.get("eventSequenceNumber"), '["cursor"]["value"]["eventSequenceNumber"]'
        )
        cursor = Cursor(backend_id, seq)
    return PullRequest(store_id, live, cursor)


_EVENT_STRINGS: Final = ("name", "clientId", "sessionId")


def _encode_event(event: object, index: int) -> NewEvent:
    where = f'["batch"][{index}]'
    if not isinstance(event, dict):
        raise PayloadError(f"{where}: expected object, got {_kind(event)}")
    for key in _EVENT_STRINGS:
        if not isinstance(event.get(key), str):
            raise PayloadError(f'{where}["{key}"]: expected string, got {_kind(event.get(key))}')
    seq = _safe_int(event.get("seqNum"), f'{where}["seqNum"]')
    parent = _safe_int(event.get("parentSeqNum"), f'{where}["parentSeqNum"]')
    # Canonical form: the known fields only, `args` kept absent when it was absent.
    canonical: dict[str, object] = {"name": event["name"]}
    if "args" in event:
        canonical["args"] = event["args"]
    canonical["seqNum"] = seq
    canonical["parentSeqNum"] = parent
    canonical["clientId"] = event["clientId"]
    canonical["sessionId"] = event["sessionId"]
    return NewEvent(seq, parent, dumps(canonical), event["name"], event.get("args"))


def decode_push(payload: dict[str, Any]) -> PushRequest:
    """Decode a ``SyncWsRpc.Push`` / ``SyncHttpRpc.Push`` payload (spec §6.1)."""
    _check_payload(payload)
    store_id = _store_id(payload)
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise PayloadError(f'["batch"]: expected array, got {_kind(batch)}')
    if "backendId" not in payload:
        raise PayloadError('["backendId"] is missing')
    is_some, value = _option(payload["backendId"], '["backendId"]')
    if is_some and not isinstance(value, str):
        raise PayloadError('["backendId"]["value"]: expected string')
    events = [_encode_event(event, i) for i, event in enumerate(batch)]
    return PushRequest(store_id, events, value if is_some else None)  # type: ignore[arg-type]


def chain_error(batch: list[NewEvent]) -> str | None:
    """Why a batch does not chain (spec §6.2 SHOULD), or None when it does.

    Each event must come after its parent, and every later event must name the previous
    event as its parent. ``seqNum == parentSeqNum + 1`` is deliberately not required.
    """
    previous: NewEvent | None = None
    for index, event in enumerate(batch):
        if event.seq <= event.parent:
            return f"batch[{index}]: seqNum {event.seq} must be greater than parentSeqNum"
        if previous is not None and event.parent != previous.seq:
            return (
                f"batch[{index}]: parentSeqNum {event.parent} does not chain from "
                f"seqNum {previous.seq}"
            )
        previous = event
    return None
