"""Pure codec tests: decoding client frames and encoding server frames (spec §4-§6)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from gateway import frames, protocol
from gateway.errors import (
    BackendIdMismatch,
    FrameError,
    PayloadError,
    ServerAhead,
    UnknownFailure,
)
from gateway.protocol import (
    PING,
    Ack,
    Ignored,
    Interrupt,
    NewEvent,
    Request,
    decode_frame,
    decode_pull,
    decode_push,
)


def event(seq: int, parent: int, **extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "todoCreated",
        "args": {"id": seq},
        "seqNum": seq,
        "parentSeqNum": parent,
        "clientId": "c",
        "sessionId": "s",
    }
    base.update(extra)
    return base


class TestDecodeFrame:
    def test_ping(self) -> None:
        """The exact keepalive bytes decode to the Ping singleton."""
        assert decode_frame(b'{"_tag":"Ping"}') is PING

    def test_request_ignores_tracing_fields(self) -> None:
        """traceId/spanId/sampled are tolerated and dropped."""
        frame = {
            "_tag": "Request",
            "id": "7",
            "tag": "SyncWsRpc.Pull",
            "traceId": "x",
            "spanId": "y",
            "sampled": False,
            "headers": [],
            "payload": {"storeId": "s"},
        }
        assert decode_frame(orjson.dumps(frame)) == Request("7", "SyncWsRpc.Pull", {"storeId": "s"})

    def test_ack_and_interrupt(self) -> None:
        """Flow-control frames carry the request id string."""
        assert decode_frame(b'{"_tag":"Ack","requestId":"3"}') == Ack("3")
        assert decode_frame(b'{"_tag":"Interrupt","requestId":"3"}') == Interrupt("3")

    def test_unknown_and_eof_tags_are_ignored(self) -> None:
        """Eof and unknown tags are tolerated (spec §4.5)."""
        assert decode_frame(b'{"_tag":"Eof"}') == Ignored("Eof")
        assert decode_frame(b'{"_tag":"Whatever"}') == Ignored("Whatever")

    @pytest.mark.parametrize(
        "data",
        [
            b"not json",
            b"[1,2]",
            b'"str"',
            b"{}",
            b'{"_tag":5}',
            b'{"_tag":"Request","id":-1,"tag":"SyncWsRpc.Pull","payload":{}}',
            b'{"_tag":"Request","id":1.5,"tag":"SyncWsRpc.Pull","payload":{}}',
            b'{"_tag":"Request","id":true,"tag":"SyncWsRpc.Pull","payload":{}}',
            b'{"_tag":"Request","id":9007199254740992,"tag":"SyncWsRpc.Pull","payload":{}}',
            b'{"_tag":"Request","id":"0","tag":7,"payload":{}}',
            b'{"_tag":"Ack","requestId":null}',
        ],
    )
    def test_unusable_frames_raise_frame_error(self, data: bytes) -> None:
        """Non-JSON, non-objects, ids that are neither strings nor safe integers: a
        connection-level Defect."""
        with pytest.raises(FrameError):
            decode_frame(data)

    def test_numeric_ids_are_effect4_requests(self) -> None:
        """Effect 4 clients number their requests; the id keeps its JSON type."""
        request = decode_frame(b'{"_tag":"Request","id":0,"tag":"SyncWsRpc.Pull","payload":{}}')
        assert isinstance(request, Request)
        assert request.id == 0
        assert type(request.id) is int
        assert protocol.effect4(request.id)
        assert not protocol.effect4("0")
        assert decode_frame(b'{"_tag":"Ack","requestId":3}') == Ack(3)
        assert decode_frame(b'{"_tag":"Interrupt","requestId":3}') == Interrupt(3)

    def test_non_object_payload_fails_only_the_request(self) -> None:
        """A Request with an array payload stays addressable, and then dies."""
        request = decode_frame(b'{"_tag":"Request","id":"1","tag":"SyncWsRpc.Push","payload":[]}')
        assert isinstance(request, Request)
        with pytest.raises(PayloadError):
            decode_push(request.payload)


class TestPull:
    def test_none_cursor(self) -> None:
        pull = decode_pull({"storeId": "s", "live": True, "cursor": {"_tag": "None"}})
        assert (pull.store_id, pull.live, pull.cursor) == ("s", True, None)

    def test_some_cursor(self) -> None:
        cursor = {"_tag": "Some", "value": {"backendId": "b", "eventSequenceNumber": 4}}
        pull = decode_pull({"storeId": "s", "live": False, "cursor": cursor})
        assert pull.cursor == protocol.Cursor("b", 4)

    def test_http_pull_has_no_live_flag(self) -> None:
        pull = decode_pull({"storeId": "s", "cursor": {"_tag": "None"}}, http=True)
        assert pull.live is False

    @pytest.mark.parametrize(
        "payload",
        [
            {"storeId": "s", "live": True},
            {"storeId": "s", "live": "yes", "cursor": {"_tag": "None"}},
            {"storeId": 1, "live": True, "cursor": {"_tag": "None"}},
            {"storeId": "s", "live": True, "cursor": None},
            {"storeId": "s", "live": True, "cursor": {"_tag": "Some"}},
            {
                "storeId": "s",
                "live": True,
                "cursor": {"_tag": "Some", "value": {"backendId": "b", "eventSequenceNumber": 1.5}},
            },
            {
                "storeId": "s",
                "live": True,
                "cursor": {"_tag": "Some", "value": {"backendId": "b", "eventSequenceNumber": "1"}},
            },
        ],
    )
    def test_malformed_pull(self, payload: dict[str, object]) -> None:
        """Schema violations are PayloadErrors (answered with Die)."""
        with pytest.raises(PayloadError):
            decode_pull(payload)


class TestPush:
    def test_canonical_encoding_keeps_args_verbatim(self) -> None:
        """Known fields are kept, unknown ones dropped, a missing args stays missing."""
        push = decode_push(
            {
                "storeId": "s",
                "batch": [
                    event(1, 0, extra="x"),
                    {k: v for k, v in event(2, 1).items() if k != "args"},
                ],
                "backendId": {"_tag": "None"},
            }
        )
        first, second = (orjson.loads(e.data) for e in push.batch)
        assert first == event(1, 0)
        assert "args" not in second
        assert push.backend_id is None

    def test_backend_id_some(self) -> None:
        push = decode_push(
            {"storeId": "s", "batch": [], "backendId": {"_tag": "Some", "value": "b"}}
        )
        assert push.backend_id == "b"

    @pytest.mark.parametrize(
        "bad",
        [
            {"seqNum": "1"},
            {"seqNum": 1.5},
            {"seqNum": True},
            {"seqNum": -1},
            {"seqNum": 2**53},
            {"parentSeqNum": None},
            {"name": 3},
            {"clientId": None},
        ],
    )
    def test_malformed_events(self, bad: dict[str, object]) -> None:
        with pytest.raises(PayloadError):
            decode_push(
                {"storeId": "s", "batch": [event(1, 0, **bad)], "backendId": {"_tag": "None"}}
            )

    def test_missing_backend_id(self) -> None:
        with pytest.raises(PayloadError):
            decode_push({"storeId": "s", "batch": []})

    def test_chain_rules(self) -> None:
        """Batches must chain; seq == parent + 1 is not required (spec §6.2)."""

        def chain(*pairs: tuple[int, int]) -> str | None:
            return protocol.chain_error([NewEvent(s, p, b"{}") for s, p in pairs])

        assert chain((1, 0), (2, 1)) is None
        assert chain((100, 0), (101, 100)) is None
        assert chain((5, 0), (9, 3)) is not None
        assert chain((1, 1)) is not None
        assert chain((2, 1), (1, 2)) is not None


class TestEncoding:
    def test_split_pages_by_count(self) -> None:
        """At most 100 events per PullResponse."""
        pages = frames.split_pages([b"{}"] * 250, b'"b"')
        assert [len(p) for p in pages] == [100, 100, 50]

    def test_split_pages_by_bytes(self) -> None:
        """Every serialised item stays within 900,000 bytes, an oversized entry alone."""
        entries = [b'"' + b"x" * 120_000 + b'"'] * 20 + [b'"' + b"y" * 1_000_000 + b'"']
        pages = frames.split_pages(entries, b'"backend"')
        for page in pages[:-1]:
            item = frames.pull_item(page, frames.more_known(2**53 - 1), b'"backend"')
            assert len(item) <= protocol.MAX_ITEM_BYTES
        assert len(pages[-1]) == 1
        assert sum(len(p) for p in pages) == 21

    def test_chunk_frame_is_valid_json(self) -> None:
        """Prefix + shared tail make one Chunk with the request id echoed exactly."""
        rid = frames.request_id_json("18446744073709551616")
        item = frames.pull_item([], frames.NO_MORE, b'"b"')
        frame = orjson.loads(frames.chunk_prefix(rid) + frames.chunk_tail(item))
        assert frame == {
            "_tag": "Chunk",
            "requestId": "18446744073709551616",
            "values": [{"batch": [], "pageInfo": {"_tag": "NoMore"}, "backendId": "b"}],
        }

    def test_metadata_format(self) -> None:
        """createdAt is ISO 8601 with milliseconds and Z."""
        meta = orjson.loads(frames.metadata(1_767_268_800_007))
        assert meta == {
            "_tag": "Some",
            "value": {"_tag": "SyncMessage.SyncMetadata", "createdAt": "2026-01-01T12:00:00.007Z"},
        }

    @pytest.mark.parametrize(
        "ms",
        [
            0,
            999,
            1000,
            1_767_268_799_999,
            1_767_268_800_000,
            1_767_268_800_001,
            4_102_444_800_000,
        ],
    )
    def test_iso_millis_matches_datetime_whatever_came_before(self, ms: int) -> None:
        """The per-second cache never leaks one second's text into another's timestamps."""
        second, millis = divmod(ms, 1000)
        expected = f"{datetime.fromtimestamp(second, tz=UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"
        for before in (ms - 1, ms + 1000, ms, 0):
            frames.iso_millis(max(before, 0))
            assert frames.iso_millis(ms) == expected, (before, ms)

    def test_exits(self) -> None:
        rid = frames.request_id_json("1")
        assert orjson.loads(frames.exit_success(rid, frames.PUSH_ACK)) == {
            "_tag": "Exit",
            "requestId": "1",
            "exit": {"_tag": "Success", "value": {}},
        }
        failure = orjson.loads(frames.exit_fail(rid, ServerAhead(2, 1)))
        assert failure["exit"]["cause"] == {
            "_tag": "Fail",
            "error": {"_tag": "ServerAheadError", "minimumExpectedNum": 2, "providedNum": 1},
        }
        mismatch = orjson.loads(frames.exit_fail(rid, BackendIdMismatch("a", "b")))
        assert mismatch["exit"]["cause"]["error"] == {
            "_tag": "BackendIdMismatchError",
            "expected": "a",
            "received": "b",
        }
        unknown = orjson.loads(frames.exit_fail(rid, UnknownFailure("broken", "push")))
        assert unknown["exit"]["cause"]["error"] == {
            "_tag": "UnknownError",
            "cause": {"name": "Error", "message": "broken"},
            "note": "push",
        }
        die = orjson.loads(frames.exit_die(rid, "bad"))
        assert die["exit"]["cause"] == {"_tag": "Die", "defect": "bad"}
        assert orjson.loads(frames.exit_success_void(rid))["exit"] == {
            "_tag": "Success",
            "value": None,
        }

    def test_exits_for_effect4_clients(self) -> None:
        """A numeric id is echoed as a number, and a failed Exit's cause is an array."""
        rid = frames.request_id_json(7)
        assert rid == b"7"
        failure = orjson.loads(frames.exit_fail(rid, ServerAhead(2, 1)))
        assert failure["requestId"] == 7
        assert failure["exit"]["cause"] == [
            {
                "_tag": "Fail",
                "error": {"_tag": "ServerAheadError", "minimumExpectedNum": 2, "providedNum": 1},
            }
        ]
        die = orjson.loads(frames.exit_die(rid, "bad"))
        assert die["exit"]["cause"] == [{"_tag": "Die", "defect": "bad"}]
        void = orjson.loads(frames.exit_success_void(rid))
        assert void == {"_tag": "Exit", "requestId": 7, "exit": {"_tag": "Success", "value": None}}
