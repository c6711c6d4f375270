"""A client library for internal services: follow a store's event log and write to it.

Speaks LiveStore's sync-cf 0.4.0 protocol to gateway (or any conforming server), over a
WebSocket or, with ``transport="http"``, one POST per request (:mod:`gateway.client.http`)::

    async with connect("ws://127.0.0.1:8787", "store-1", bypass_token=TOKEN) as store:
        async for batch in store.events(after=None, live=True):
            ...  # batch.events, then persist str(batch.cursor)
        seq = await store.commit("todoCreated-v1", {"id": "t1", "text": "hello"})

Depends only on ``websockets``, ``orjson`` and gateway's pure wire helpers
(:mod:`gateway.frames`), never on the server.
"""

from gateway.client.connecting import connect
from gateway.client.model import (
    BackendIdMismatch,
    Batch,
    ClientError,
    ConnectionClosed,
    Cursor,
    Event,
    ProtocolViolation,
    Refused,
    RequestFailed,
    Stats,
    Writer,
)
from gateway.client.store import StoreClient, TokenProvider

__all__ = [
    "BackendIdMismatch",
    "Batch",
    "ClientError",
    "ConnectionClosed",
    "Cursor",
    "Event",
    "ProtocolViolation",
    "Refused",
    "RequestFailed",
    "Stats",
    "StoreClient",
    "TokenProvider",
    "Writer",
    "connect",
]
