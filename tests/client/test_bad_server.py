"""gateway.client against a server that breaks the protocol: a clear exception, never a hang."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway.client import ProtocolViolation, RequestFailed, connect
from tests.helpers.timeouts import TIMEOUT_UNIT


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        b"[1,2]",
        b'{"_tag":"Defect","defect":"Unknown request tag"}',
        b'{"_tag":"Chunk","requestId":"0","values":[{"batch":[{"nope":1}],"backendId":"b"}]}',
        b'{"_tag":"Chunk","requestId":"0","values":[{"batch":[{"eventEncoded":{"name":"e",'
        b'"seqNum":0,"parentSeqNum":0,"clientId":"c","sessionId":"s"}}],"backendId":"b"}]}',
    ],
    ids=["not-json", "array", "defect", "no-event", "seq-not-after-cursor"],
)
async def test_a_malformed_frame_raises_protocol_violation(reply: bytes) -> None:
    await _first_batch_raises(reply, ProtocolViolation)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b'{"_tag":"Exit","requestId":"0"}', ProtocolViolation),
        (
            b'{"_tag":"Chunk","requestId":"0","values":[{"batch":[],"backendId":7}]}',
            ProtocolViolation,
        ),
        (
            b'{"_tag":"Chunk","requestId":"0","values":[{"batch":[{"eventEncoded":{"name":"e",'
            b'"seqNum":"1","parentSeqNum":0,"clientId":"c","sessionId":"s"}}],"backendId":"b"}]}',
            ProtocolViolation,
        ),
        (
            b'{"_tag":"Exit","requestId":"0","exit":{"_tag":"Failure","cause":[{"_tag":"Die",'
            b'"defect":"boom"}]}}',
            RequestFailed,
        ),
        (
            b'{"_tag":"Exit","requestId":"0","exit":{"_tag":"Failure","cause":{"_tag":"Fail",'
            b'"error":{"_tag":"UnknownError","cause":null}}}}',
            RequestFailed,
        ),
    ],
    ids=["exit-without-exit", "backend-id-number", "seq-not-int", "die-array", "unknown-error"],
)
async def test_a_failed_or_broken_answer_is_a_clear_exception(
    reply: bytes, error: type[Exception]
) -> None:
    """A pull answered with a malformed Exit or Chunk, a defect or a typed failure raises the
    matching exception (not a hang, not a retry loop)."""
    await _first_batch_raises(reply, error)


async def _first_batch_raises(reply: bytes, error: type[Exception]) -> None:
    """A server answering every frame with ``reply``: the first pull raises ``error``."""

    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send(reply, text=True)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", "s", backoff_base=0.05) as store:
            with pytest.raises(error):
                await asyncio.wait_for(anext(store.events()), 5 * TIMEOUT_UNIT)
