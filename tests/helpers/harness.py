"""An in-process gateway on 127.0.0.1:0 (the ``gateway`` and ``make_gateway`` fixtures)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from gateway.admission import ValidatePayload
from gateway.app import Gateway
from gateway.config import Config
from gateway.store import EventStore
from tests.helpers.postgres import POSTGRES_DSN, drop_schema, fresh_schema, require_postgres
from tests.helpers.urls import sync_url


class GatewayHarness:
    """A running in-process gateway plus helpers to build client URLs and restart it."""

    def __init__(
        self,
        config: Config,
        *,
        validate_payload: ValidatePayload | None = None,
        store: EventStore | None = None,
    ) -> None:
        self.config = config
        self.validate_payload = validate_payload
        self.gw = Gateway(config, validate_payload=validate_payload, store=store)

    @property
    def port(self) -> int:
        return self.gw.port

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ws_url(self, store_id: str, *, payload: object = None, path: str = "/") -> str:
        return sync_url(self.base, store_id, payload=payload, path=path)

    def http_url(self, store_id: str, *, payload: object = None, path: str = "/") -> str:
        return sync_url(self.base, store_id, payload=payload, transport="http", path=path)

    async def start(self) -> None:
        await self.gw.start()

    async def stop(self) -> None:
        await self.gw.stop()

    async def restart(self) -> None:
        """Stop the server and start a new one on the same data directory (a new port)."""
        await self.gw.stop()
        self.gw = Gateway(self.config, validate_payload=self.validate_payload)
        await self.gw.start()


class MakeGateway(Protocol):
    """The ``make_gateway`` fixture: ``await make_gateway(**config_overrides)``, where
    ``validate_payload=hook`` installs a payload hook instead of the auth policy."""

    async def __call__(self, **overrides: Any) -> GatewayHarness: ...


# The ``gateway_with_validator`` fixture (tests/conformance): ``await factory(hook)``.
ValidatorGateway = Callable[[Any], Awaitable[GatewayHarness]]


@asynccontextmanager
async def postgres_nodes(
    make_gateway: MakeGateway, data_root: Path, count: int = 2, **settings: Any
) -> AsyncIterator[list[GatewayHarness]]:
    """``count`` in-process gateways sharing a fresh PostgreSQL schema (dropped afterwards,
    once the nodes are stopped); ``settings`` are each node's config overrides."""
    await require_postgres()
    schema = fresh_schema()
    nodes: list[GatewayHarness] = []
    try:
        for index in range(count):
            nodes.append(
                await make_gateway(
                    backend="postgres",
                    dsn=POSTGRES_DSN,
                    postgres_schema=schema,
                    data_dir=str(data_root / f"node{index}"),
                    **settings,
                )
            )
        yield nodes
    finally:
        for node in nodes:
            await node.stop()
        await drop_schema(schema)
