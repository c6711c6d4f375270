"""The group commit's notification codec (gateway/store/pg_notice.py): what is encoded
decodes to the same events, byte for byte; the payload limit is kept; an old node (which
reads ``c`` only, with a plain JSON parse) still understands it; malformed payloads raise."""

from __future__ import annotations

import logging

import orjson
import pytest

from gateway.protocol import NewEvent
from gateway.store import StoredEvent
from gateway.store.pg_listen import PostgresListener
from gateway.store.pg_notice import (
    MAX_NOTICE,
    Carried,
    Commits,
    Written,
    decode,
    encode,
    own_prefix,
)

NODE = "0123456789abcdef"


def _events(first: int, n: int, text: str = "x") -> list[NewEvent]:
    return [
        NewEvent(
            seq,
            seq - 1,
            orjson.dumps({"name": "e", "args": {"t": text, "q": '"],"d":[,'}, "seqNum": seq}),
        )
        for seq in range(first, first + n)
    ]


def _stored(created_ms: int, events: list[NewEvent]) -> list[StoredEvent]:
    return [StoredEvent(e.seq, e.parent, created_ms, e.data) for e in events]


def _decode(payload: str) -> Commits:
    message = decode(payload)
    assert isinstance(message, Commits), message
    return message


def test_round_trip_carries_every_store_s_events_byte_for_byte() -> None:
    one, two, three = _events(1, 2), _events(3, 1), _events(8, 3, "ünï ☃ 𝄞")
    written = [
        Written("a", "backend-a", [(10, one), (11, two)]),  # written twice in the group
        Written("ström ☃", "backend-b", [(12, three)]),
        Written('x,"d":[y', "backend-c", [(14, _events(1, 1))]),  # the separator, escaped
        Written("head-only", None, [(13, _events(5, 1))]),
    ]
    (payload,) = encode(NODE, written)
    commits = _decode(payload)
    assert commits.node == NODE
    assert commits.heads == [("a", 3), ("ström ☃", 10), ('x,"d":[y', 1), ("head-only", 5)]
    assert commits.carried == {
        "a": Carried("backend-a", _stored(10, one) + _stored(11, two)),
        "ström ☃": Carried("backend-b", _stored(12, three)),
        'x,"d":[y': Carried("backend-c", _stored(14, _events(1, 1))),
    }
    # Valid JSON as a whole: a node of the previous version reads its "c".
    old = orjson.loads(payload)
    assert old["c"] == [["a", 3], ["ström ☃", 10], ['x,"d":[y', 1], ["head-only", 5]]
    assert old["d"][0] == orjson.loads(one[0].data)


def test_own_notifications_are_recognised_by_their_prefix() -> None:
    (payload,) = encode(NODE, [Written("a", "b", [(1, _events(1, 1))])])
    assert payload.startswith(own_prefix(NODE))
    assert not payload.startswith(own_prefix("fedcba9876543210"))


def test_notifications_are_split_under_the_limit_and_oversized_events_go_head_only() -> None:
    big = NewEvent(1, 0, orjson.dumps({"name": "e", "args": "y" * MAX_NOTICE}))
    written = [
        Written(f"store-{'x' * 100}-{k}", f"b{k}", [(k, _events(k + 1, 3, "z" * 200))])
        for k in range(40)
    ]
    written.insert(7, Written("huge", "bh", [(1, [big])]))
    payloads = encode(NODE, written)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_NOTICE for p in payloads)
    decoded = [_decode(p) for p in payloads]
    heads = [h for c in decoded for h in c.heads]
    assert heads == [(w.store_id, w.head) for w in written]
    carried = {s: c for d in decoded for s, c in d.carried.items()}
    assert "huge" not in carried  # announced, its events read from the log
    assert set(carried) == {w.store_id for w in written} - {"huge"}
    for w in written[:7] + written[8:]:
        assert carried[w.store_id].events == _stored(w.batches[0][0], list(w.batches[0][1]))


def test_many_head_only_stores_are_split_too() -> None:
    written = [
        Written(f"store-{'x' * 180}-{k}", None, [(1, _events(k + 1, 1))]) for k in range(200)
    ]
    payloads = encode(NODE, written)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_NOTICE for p in payloads)
    assert [h for p in payloads for h in _decode(p).heads] == [
        (w.store_id, w.head) for w in written
    ]
    assert all(not _decode(p).carried for p in payloads)


def test_previous_formats_decode_without_events() -> None:
    commits = _decode('{"c": [["a", 3], ["b", 4]]}')
    assert (commits.node, commits.heads, commits.carried) == (None, [("a", 3), ("b", 4)], {})
    assert decode('{"s": "old", "h": 7}') == {"s": "old", "h": 7}


def _tampered() -> list[str]:
    (good,) = encode(NODE, [Written("a", "b", [(1, _events(1, 2))])])
    first = orjson.loads(good[: good.index(',"d":[')] + "}")["e"][0]
    return [
        good.replace(f",{first[5]},", f",{first[5] + 1},", 1),  # a length off by one
        good[:-2] + ',"x"]}',  # data the lengths do not cover
        good.replace('[["a",2]]', '[["a",3]]', 1),  # events not ending at the head
        good.replace('"e":[["a","b",1,', '"e":[["a","b",5,', 1),  # not consecutive
        good[:-1],  # truncated
        "not json",
        "[1, 2]",
        '{"c": [["a"]]}',
    ]


@pytest.mark.parametrize("payload", _tampered())
def test_malformed_payloads_raise(payload: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        decode(payload)


@pytest.mark.parametrize("payload", _tampered())
def test_the_listener_ignores_malformed_payloads_with_a_warning(
    payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[object] = []
    listener = PostgresListener()
    listener.node = NODE
    listener._on_commit = lambda *args: heard.append(args)
    listener._on_commits = lambda *args: heard.append(args)
    with caplog.at_level(logging.WARNING, "gateway.store.postgres"):
        listener._notified(None, 0, "ch", payload)
    assert heard == []
    assert "malformed notification" in caplog.text


def test_the_listener_skips_its_own_and_hands_on_the_others() -> None:
    heard: list[object] = []
    listener = PostgresListener()
    listener.node = NODE
    listener._own_prefix = own_prefix(NODE)
    listener._on_commits = lambda *args: heard.append(args)
    (own,) = encode(NODE, [Written("a", "b", [(1, _events(1, 1))])])
    listener._notified(None, 0, "ch", own)
    assert heard == []
    (other,) = encode("fedcba9876543210", [Written("a", "b", [(1, _events(1, 1))])])
    listener._notified(None, 0, "ch", other)
    assert heard == [([("a", 1)], {"a": Carried("b", _stored(1, _events(1, 1)))})]
