"""Fixtures for the §14 conformance suite: raw RPC clients that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers.clients import Connect, RpcClient
from tests.helpers.harness import GatewayHarness, MakeGateway, ValidatorGateway


@pytest.fixture(name="connect")
async def _connect(make_gateway: MakeGateway) -> AsyncIterator[Connect]:
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


@pytest.fixture(name="gateway_with_validator")
def _gateway_with_validator(make_gateway: MakeGateway) -> ValidatorGateway:
    """Factory: ``await gateway_with_validator(hook)`` starts a gateway whose
    ``validate_payload`` hook is ``hook`` (spec §3), on 127.0.0.1:0; stopped after the test."""

    async def factory(hook: Any) -> GatewayHarness:
        return await make_gateway(validate_payload=hook)

    return factory
