"""Composition root: builds the store, hub, engine and frontend from a Config and runs them."""

from __future__ import annotations

import asyncio
import logging

from gateway.authgate import AuthGate
from gateway.config import Config
from gateway.engine import SyncEngine
from gateway.handshake import ValidatePayload
from gateway.hub import Hub
from gateway.server import Frontend
from gateway.store import EventStore, StoreError
from gateway.store.sqlite import SqliteStore

logger = logging.getLogger(__name__)


def make_store(config: Config) -> EventStore:
    """The backend registry (``[store] backend``)."""
    if config.store.backend == "sqlite":
        return SqliteStore(config.store.data_dir, synchronous=config.store.synchronous)
    raise ValueError(f"unknown store backend {config.store.backend!r}")  # config validated


class Gateway:
    """One gateway node: ``await start()``, serve, ``await stop()``."""

    def __init__(self, config: Config, *, validate_payload: ValidatePayload | None = None):
        self.config = config
        self.store = make_store(config)
        self.hub = Hub()
        self.engine = SyncEngine(self.store, self.hub)
        self.auth = AuthGate(config.auth)
        self.frontend = Frontend(
            config,
            self.engine,
            validate_payload or self.auth,
            self.ready,
            push_gate=self.auth.wait_push,
        )
        self._started = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.frontend.start()
        except BaseException:
            await self.store.close()
            raise
        self._started = True

    @property
    def port(self) -> int:
        return self.frontend.port

    @property
    def host(self) -> str:
        return str(self.frontend.sockets[0].getsockname()[0])

    async def ready(self) -> bool:
        try:
            await self.store.check()
        except StoreError:
            return False
        return True

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a bound on the whole shutdown, not one call
        """Graceful stop: no new connections, admitted pushes finish and are acked, peers
        are closed with 1001, then the store is closed."""
        if not self._started:
            return
        self._started = False
        self.frontend.stop_accepting()
        try:
            async with asyncio.timeout(timeout):
                await self.engine.drain()
        except TimeoutError:
            logger.error("pushes still in flight after %.1f s", timeout)
        await self.frontend.close(timeout)
        await self.engine.drain()
        await self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
