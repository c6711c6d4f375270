"""Fixtures for the §14 conformance suite: raw RPC clients that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import GatewayHarness
from tests.support import RpcClient

Connect = Callable[..., Awaitable[RpcClient]]


@pytest.fixture(name="connect")
async def _connect(make_gateway: object) -> AsyncIterator[Connect]:
    """Factory: ``await connect(gateway, store_id, payload=..., path=...)`` opens an RpcClient.

    It depends on ``make_gateway`` so that the clients are closed before the gateways stop.
    """
    opened: list[RpcClient] = []

    async def factory(
        gw: GatewayHarness,
        store_id: str,
        *,
        payload: Any = None,
        path: str = "/",
        **kwargs: Any,
    ) -> RpcClient:
        client = await RpcClient.open(
            gw.ws_url(store_id, payload=payload, path=path), store_id, payload=payload, **kwargs
        )
        opened.append(client)
        return client

    yield factory
    for client in opened:
        await client.close()
