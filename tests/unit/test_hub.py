"""The hub on its own (gateway/hub.py): fan-out order, the catch-up FIFO and its hand-off to
live delivery, slow-consumer eviction at ``send_limit``, unsubscription, paging.

The connection edge is a :class:`~tests.helpers.fakes.RecordingOutbox`; hub and subscriptions
are real.
"""

from __future__ import annotations

import orjson

from gateway import frames
from gateway.hub import Hub, Subscription
from tests.helpers.fakes import RecordingOutbox, new_events

BACKEND = orjson.dumps("backend-1")


def _entries(first: int, n: int) -> list[bytes]:
    meta = frames.metadata(1_700_000_000_000)
    return [frames.event_entry(event.data, meta) for event in new_events(first, n)]


def _frame_bytes(rid: str, first: int, n: int) -> int:
    """The size of the one live frame that carries events ``first .. first + n - 1``."""
    item = frames.pull_item(_entries(first, n), frames.NO_MORE, BACKEND)
    return len(frames.chunk_prefix(orjson.dumps(rid)) + frames.chunk_tail(item))


def _live(hub: Hub, outbox: RecordingOutbox, rid: str, store: str = "s") -> Subscription:
    sub = Subscription(outbox, store, orjson.dumps(rid))
    hub.subscribe(sub)
    sub.go_live()
    return sub


def test_publication_reaches_every_live_subscriber_in_order_under_its_request_id() -> None:
    hub = Hub()
    first, second, elsewhere = RecordingOutbox(), RecordingOutbox(), RecordingOutbox()
    _live(hub, first, "1")
    _live(hub, second, "77")
    _live(hub, elsewhere, "1", store="other")
    for start in (1, 3, 6):
        assert hub.publish("s", _entries(start, 3 if start == 3 else 2), BACKEND) == 2
    assert first.seqs() == second.seqs() == [1, 2, 3, 4, 5, 6, 7]
    assert elsewhere.frames == []
    for outbox, rid in ((first, "1"), (second, "77")):
        for frame in outbox.parsed():
            assert frame["_tag"] == "Chunk"
            assert frame["requestId"] == rid
            (item,) = frame["values"]
            assert item["pageInfo"] == {"_tag": "NoMore"}
            assert item["backendId"] == "backend-1"


def test_catch_up_fifo_holds_publications_until_go_live_then_sends_directly() -> None:
    """No gap, no duplicate at the hand-off: what is published during catch-up is sent, in
    order, exactly once, before anything published afterwards."""
    hub = Hub()
    outbox = RecordingOutbox()
    sub = Subscription(outbox, "s", b'"9"')
    hub.subscribe(sub)
    hub.publish("s", _entries(1, 2), BACKEND)
    hub.publish("s", _entries(3, 1), BACKEND)
    assert outbox.frames == [], "a subscription still catching up was written to"
    sub.go_live()
    assert outbox.seqs() == [1, 2, 3]
    hub.publish("s", _entries(4, 2), BACKEND)
    assert outbox.seqs() == [1, 2, 3, 4, 5]
    sub.go_live()  # a second hand-off sends nothing again
    assert outbox.seqs() == [1, 2, 3, 4, 5]


def test_pending_bytes_over_send_limit_evict_only_that_subscriber() -> None:
    """A subscription whose catch-up FIFO passes its connection's ``send_limit`` is evicted
    once and receives nothing more; exactly at the limit it is not."""
    one_frame = _frame_bytes("5", 1, 1)
    hub = Hub()
    slow = RecordingOutbox(send_limit=one_frame, evictable=True)
    healthy = RecordingOutbox()
    slow_sub = Subscription(slow, "s", b'"5"')
    hub.subscribe(slow_sub)
    _live(hub, healthy, "6")

    hub.publish("s", _entries(1, 1), BACKEND)
    assert slow.evictions == [], "evicted at exactly send_limit pending bytes"
    hub.publish("s", _entries(2, 1), BACKEND)
    assert slow.evictions == ["slow consumer"]
    hub.publish("s", _entries(3, 1), BACKEND)
    slow_sub.go_live()
    assert slow.frames == [], "an evicted subscription was written to"
    assert slow.evictions == ["slow consumer"], "evicted twice"
    assert healthy.seqs() == [1, 2, 3]


def test_unsubscribed_pull_gets_nothing_and_is_not_counted() -> None:
    hub = Hub()
    kept, gone = RecordingOutbox(), RecordingOutbox()
    _live(hub, kept, "1")
    gone_sub = _live(hub, gone, "2")
    assert hub.subscriber_count("s") == 2
    assert hub.subscriber_count() == 2
    hub.unsubscribe(gone_sub)
    assert hub.subscriber_count("s") == 1
    assert hub.publish("s", _entries(1, 1), BACKEND) == 1
    assert kept.seqs() == [1]
    assert gone.frames == []
    hub.unsubscribe(gone_sub)  # twice is harmless
    assert hub.subscriber_count() == 1


def test_publish_without_subscribers_or_entries_sends_nothing() -> None:
    hub = Hub()
    assert hub.publish("nobody", _entries(1, 1), BACKEND) == 0
    outbox = RecordingOutbox()
    _live(hub, outbox, "1")
    assert hub.publish("s", [], BACKEND) == 0
    assert outbox.frames == []


def test_a_large_batch_goes_out_in_pages_of_at_most_100_events() -> None:
    hub = Hub()
    outbox = RecordingOutbox()
    _live(hub, outbox, "1")
    assert hub.publish("s", _entries(1, 250), BACKEND) == 3
    sizes = [len(frame["values"][0]["batch"]) for frame in outbox.parsed()]
    assert sizes == [100, 100, 50]
    assert outbox.seqs() == list(range(1, 251))
