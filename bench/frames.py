"""Wire frames the load generator sends, and the cheap parsing it does on what comes back.

Everything here is bytes in, bytes out. The load generator must cost less per frame than the
server it measures, so subscribers do not parse whole frames: they find the push timestamp
(the first key of every event's ``args``) and the first ``seqNum`` with ``bytes.find``, and
count events with ``bytes.count``. That works the same on a gateway ``Chunk`` (events under
``values[].batch[].eventEncoded``) and on the baseline's relayed ``Request`` frame (events
under ``payload.batch``), because both carry the events as pushed.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import quote, urlencode

import orjson

PING = b'{"_tag":"Ping"}'
NONE = {"_tag": "None"}
# The id every pull of the load generator uses: each connection has at most one pull.
PULL_ID = "0"
ACK_PULL = b'{"_tag":"Ack","requestId":"0"}'

T_MARK = b'"args":{"t":'
SEQ_MARK = b'"seqNum":'
CHUNK_START = b'{"_tag":"Chunk"'
REQUEST_START = b'{"_tag":"Request"'
EXIT_START = b'{"_tag":"Exit"'
NO_MORE = b'"pageInfo":{"_tag":"NoMore"}'

# A todo-app sized event: name, a timestamp, an id and a line of text. The texts vary (a
# fixed pseudo-random pool) so that compression is not measured on identical payloads.
_WORDS = (
    "buy",
    "oat",
    "milk",
    "call",
    "the",
    "plumber",
    "about",
    "kitchen",
    "sink",
    "book",
    "flights",
    "to",
    "lisbon",
    "renew",
    "passport",
    "water",
    "plants",
    "send",
    "invoice",
    "review",
    "pull",
    "request",
    "fix",
    "bike",
    "tyre",
    "pick",
    "up",
    "parcel",
    "from",
    "post",
    "office",
    "email",
    "landlord",
    "schedule",
    "dentist",
    "prepare",
    "slides",
    "for",
    "monday",
    "standup",
    "clean",
    "garage",
)


def _texts(n: int) -> list[str]:
    rng = random.Random(6)
    out = []
    for _ in range(n):
        words = rng.sample(_WORDS, rng.randint(5, 12))
        out.append(" ".join(words).capitalize() + f" #{rng.randint(1, 9999)}")
    return out


TEXTS = _texts(1024)


def sync_query(store_id: str, payload: object | None) -> str:
    """The query string of the 0.4.0 client (spec §2.1): payload JSON, percent-encoded twice."""
    params = [("storeId", store_id)]
    if payload is not None:
        params.append(("payload", quote(orjson.dumps(payload).decode(), safe="")))
    params.append(("transport", "ws"))
    return urlencode(params)


def resource(store_id: str, payload: object | None) -> str:
    return "/?" + sync_query(store_id, payload)


def request(rid: str, tag: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"_tag": "Request", "id": rid, "tag": tag, "payload": payload, "headers": []}
    )


def _body(store_id: str, sync_payload: object | None) -> dict[str, Any]:
    """A request payload's first keys: ``storeId``, then the sync payload if any."""
    body: dict[str, Any] = {"storeId": store_id}
    if sync_payload is not None:
        body["payload"] = sync_payload
    return body


def pull_frame(store_id: str, sync_payload: object | None, *, live: bool = True) -> bytes:
    body = _body(store_id, sync_payload)
    body["live"] = live
    body["cursor"] = NONE
    return request(PULL_ID, "SyncWsRpc.Pull", body)


def make_events(first_seq: int, n: int, t_ns: int, client_id: str) -> list[dict[str, Any]]:
    """``n`` chained events from ``first_seq``; ``args.t`` is the push time (monotonic ns)."""
    return [
        {
            "name": "v1.TodoCreated",
            "args": {"t": t_ns, "id": f"{client_id}-{seq}", "text": TEXTS[seq % 1024]},
            "seqNum": seq,
            "parentSeqNum": seq - 1,
            "clientId": client_id,
            "sessionId": "bench-session",
        }
        for seq in range(first_seq, first_seq + n)
    ]


def push_frame(
    rid: str, store_id: str, sync_payload: object | None, events: list[dict[str, Any]]
) -> bytes:
    body = _body(store_id, sync_payload)
    body["batch"] = events
    body["backendId"] = NONE
    return request(rid, "SyncWsRpc.Push", body)


def first_int_after(data: bytes, mark: bytes) -> int:
    """The integer right after the first ``mark`` in ``data``, or -1."""
    i = data.find(mark)
    if i < 0:
        return -1
    i += len(mark)
    j = i
    n = len(data)
    while j < n and 48 <= data[j] <= 57:
        j += 1
    return int(data[i:j]) if j > i else -1


# -- the history the baseline serves from memory (same shape as the gateway's catch-up) ------

_META = (
    b'{"_tag":"Some","value":{"_tag":"SyncMessage.SyncMetadata",'
    b'"createdAt":"2026-01-01T12:00:00.000Z"}}'
)


def history_tails(n_events: int, backend_id: str, per_item: int = 100) -> list[bytes]:
    """Catch-up ``Chunk`` frames without their ``{"_tag":"Chunk","requestId":..`` prefix.

    The items hold the events a pusher would have pushed (seqNum 1..n), 100 per item, with
    ``MoreKnown`` page info and ``NoMore`` on the last, as the gateway pages them.
    """
    bid = orjson.dumps(backend_id)
    tails = []
    sent = 0
    while sent < n_events:
        count = min(per_item, n_events - sent)
        events = make_events(sent + 1, count, 0, "bench-history")
        entries = b",".join(
            b'{"eventEncoded":' + orjson.dumps(e) + b',"metadata":' + _META + b"}" for e in events
        )
        sent += count
        remaining = n_events - sent
        info = (
            b'{"_tag":"MoreKnown","remaining":' + str(remaining).encode() + b"}"
            if remaining
            else b'{"_tag":"NoMore"}'
        )
        item = b'{"batch":[' + entries + b'],"pageInfo":' + info + b',"backendId":' + bid + b"}"
        tails.append(b',"values":[' + item + b"]}")
    return tails


def chunk_prefix(rid_json: bytes) -> bytes:
    return b'{"_tag":"Chunk","requestId":' + rid_json
