"""Shared fixtures and hooks: a real gateway on 127.0.0.1:0 with its SQLite log in tmp_path.

Helpers (clients, frame builders, the daemon launcher, ...) live in ``tests.helpers``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop

from gateway.admission import ValidatePayload
from gateway.configfile import make_config
from gateway.engine import SyncEngine
from gateway.hub import Hub
from gateway.store.sqlite import SqliteStore
from tests.helpers.daemon import Daemon
from tests.helpers.harness import GatewayHarness, MakeGateway


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run every async test on uvloop, the loop ``gateway serve`` uses in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(name="make_gateway")
async def _make_gateway(tmp_path: Path) -> AsyncIterator[MakeGateway]:
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
async def _gateway(make_gateway: MakeGateway) -> GatewayHarness:
    """A gateway with default development settings on 127.0.0.1:0."""
    return await make_gateway()


@pytest.fixture(name="daemons")
async def _daemons() -> AsyncIterator[list[Daemon]]:
    """The ``gateway serve`` processes (tests.helpers.daemon.Daemon) a test starts: append each
    one; any still running at teardown is killed (tests assert the graceful path themselves)."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.kill()


@pytest.fixture(name="engine")
async def _engine(tmp_path: Path) -> AsyncIterator[SyncEngine]:
    """A sync engine with its own hub over a real SQLite store in tmp_path (no server)."""
    store = SqliteStore(tmp_path)
    await store.open()
    engine = SyncEngine(store, Hub())
    yield engine
    await engine.close()
    await store.close()
