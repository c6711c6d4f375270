"""Shared fixtures: a real gateway on 127.0.0.1:0 with its SQLite log in tmp_path."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import orjson
import pytest
import uvloop

from gateway.admission import ValidatePayload
from gateway.app import Gateway
from gateway.config import Config
from gateway.configfile import make_config

if TYPE_CHECKING:
    from tests.daemon import Daemon  # which imports this module

# Every wait in the suite is a multiple of this unit, so a slow CI box can scale them up.
TIMEOUT_UNIT = float(os.environ.get("GATEWAY_TEST_TIMEOUT_UNIT", "1"))


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run every async test on uvloop, the loop ``gateway serve`` uses in production."""
    return {"uvloop": uvloop.new_event_loop}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


POSTGRES_DSN = os.environ.get(
    "GATEWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


async def postgres_available() -> str | None:
    """None when the test PostgreSQL answers, else why not."""
    try:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except Exception as exc:  # any failure means: no server to test against
        return f"PostgreSQL at {POSTGRES_DSN} is not reachable: {exc}"
    await conn.close()
    return None


async def require_postgres() -> None:
    """Skip without PostgreSQL, except under CI=true, where that is a failure."""
    problem = await postgres_available()
    if problem is None:
        return
    if in_ci():
        pytest.fail(problem)
    pytest.skip(problem)


def fresh_schema() -> str:
    return f"gwtest_{uuid.uuid4().hex[:12]}"


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def sync_query(store_id: str, *, payload: object = None, transport: str = "ws") -> str:
    """The query string the real 0.4.0 client builds (spec §2.1), payload double-encoded."""
    params = [("storeId", store_id)]
    if payload is not None:
        params.append(("payload", quote(orjson.dumps(payload).decode(), safe="")))
    params.append(("transport", transport))
    return urlencode(params)


class GatewayHarness:
    """A running in-process gateway plus helpers to build client URLs and restart it."""

    def __init__(self, config: Config, *, validate_payload: ValidatePayload | None = None) -> None:
        self.config = config
        self.validate_payload = validate_payload
        self.gw = Gateway(config, validate_payload=validate_payload)

    @property
    def port(self) -> int:
        return self.gw.port

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ws_url(self, store_id: str, *, payload: object = None, path: str = "/") -> str:
        return f"ws://{self.base}{path}?{sync_query(store_id, payload=payload)}"

    def http_url(self, store_id: str, *, payload: object = None, path: str = "/") -> str:
        query = sync_query(store_id, payload=payload, transport="http")
        return f"http://{self.base}{path}?{query}"

    async def start(self) -> None:
        await self.gw.start()

    async def stop(self) -> None:
        await self.gw.stop()

    async def restart(self) -> None:
        """Stop the server and start a new one on the same data directory (a new port)."""
        await self.gw.stop()
        self.gw = Gateway(self.config, validate_payload=self.validate_payload)
        await self.gw.start()


@pytest.fixture(name="make_gateway")
async def _make_gateway(tmp_path: Path) -> AsyncIterator[object]:
    """Factory: ``await make_gateway(**overrides)`` starts a gateway; all stop at teardown.

    ``validate_payload=hook`` installs a payload hook (spec §3) instead of the auth policy.
    """
    started: list[GatewayHarness] = []

    async def factory(
        *, validate_payload: ValidatePayload | None = None, **overrides: object
    ) -> GatewayHarness:
        overrides.setdefault("data_dir", str(tmp_path / f"data{len(started)}"))
        harness = GatewayHarness(make_config(**overrides), validate_payload=validate_payload)
        await harness.start()
        started.append(harness)
        return harness

    yield factory
    for harness in started:
        await harness.stop()


@pytest.fixture(name="gateway")
async def _gateway(make_gateway: object) -> GatewayHarness:
    """A gateway with default development settings on 127.0.0.1:0."""
    return await make_gateway()  # type: ignore[operator, no-any-return]


@pytest.fixture(name="daemons")
async def _daemons() -> AsyncIterator[list[Daemon]]:
    """The ``gateway serve`` processes (tests.daemon.Daemon) a test starts: append each one;
    any still running at teardown is killed (tests assert the graceful path themselves)."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.kill()
