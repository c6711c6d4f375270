"""Composition root: builds the store, hub, engine, auth gate and frontend from a Config,
runs them, reloads what can change live, and shuts them down in order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import Metric

from gateway import metrics
from gateway.authgate import AuthGate
from gateway.config import Config, ConfigError, StoreConfig
from gateway.engine import SyncEngine
from gateway.handshake import PayloadContext, Refusal, ValidatePayload
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.server import Frontend
from gateway.store import EventStore, StoreError
from gateway.store.sqlite import SqliteStore

logger = logging.getLogger(__name__)

# Settings that need a restart to change; a reload that changes them is refused (rather than
# accepted and silently not applied). Every store setting but unloading is read once, at start.
RESTART_ONLY = (
    ("server", "host"),
    ("server", "port"),
    *(("store", f.name) for f in dataclasses.fields(StoreConfig) if f.name != "unload_idle_after"),
)


def make_store(config: Config) -> EventStore:
    """The backend registry (``[store] backend``)."""
    store = config.store
    if store.backend == "sqlite":
        return SqliteStore(store.data_dir, synchronous=store.synchronous)
    if store.backend == "postgres":
        from gateway.store.postgres import PostgresStore  # asyncpg only when used

        return PostgresStore(
            store.dsn,
            schema=store.postgres_schema,
            pool_min=store.pool_min,
            pool_max=store.pool_max,
            statement_timeout=store.statement_timeout,
            connect_timeout=store.connect_timeout,
        )
    raise ValueError(f"unknown store backend {store.backend!r}")  # config validated


class Gateway:
    """One gateway node: ``await start()``, serve, ``await reload(...)``, ``await stop()``."""

    def __init__(self, config: Config, *, validate_payload: ValidatePayload | None = None):
        self.config = config
        self.metrics = Metrics()
        self.store = make_store(config)
        self.hub = Hub()
        self.engine = SyncEngine(
            self.store, self.hub, self.metrics, reconcile_interval=config.store.reconcile_interval
        )
        self.auth = AuthGate(config.auth)
        self.frontend = Frontend(
            config,
            self.engine,
            validate_payload or self.auth,
            self.ready,
            push_gate=self.auth.wait_push,
        )
        self.metrics.add_source(self._collect)
        self._started = False
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.frontend.start()
        except BaseException:
            await self.store.close()
            raise
        loop = asyncio.get_running_loop()
        if self.engine.shared:
            self._background.append(loop.create_task(self.engine.reconcile_forever()))
        self._background.append(loop.create_task(self._unload_forever()))
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

    def status(self) -> str:
        counters = self.engine.counters
        return (
            f"ready: {counters.connections['ws']} ws peers, "
            f"{self.hub.subscriber_count()} live pulls, {self.engine.stores_loaded} stores"
        )

    async def _unload_forever(self) -> None:
        """Drop idle stores from memory (``store.unload_idle_after``, read live)."""
        while True:
            idle = self.config.store.unload_idle_after
            await asyncio.sleep(min(max(idle / 2, 0.05), 60.0) if idle > 0 else 60.0)
            idle = self.config.store.unload_idle_after
            if idle > 0:
                self.engine.unload_idle(idle)

    # -- reload ---------------------------------------------------------------------------

    async def reload(self, new: Config) -> None:
        """Apply a new configuration without dropping connections.

        Live: auth policy and keys, bypass token, grace window, limits, keepalive and
        timeouts, store unloading, log level, metrics.
        Connections whose credentials the new policy refuses are closed (4003, or 4001 when
        the token is merely expired). Raises ConfigError, changing nothing, when ``new``
        changes a restart-only setting or its keys cannot be loaded.
        """
        for section, key in RESTART_ONLY:
            if getattr(getattr(new, section), key) != getattr(getattr(self.config, section), key):
                raise ConfigError(f"{section}.{key}: changing it needs a restart")
        self.auth.apply(new.auth)  # raises ConfigError before anything changed
        self.config = new
        self.frontend.config = new
        logger.info("configuration reloaded")
        logging.getLogger().setLevel(new.log.level.upper())
        closed = await self.frontend.recheck_sessions(self._recheck)
        if closed:
            logger.warning("closed %d sessions the new configuration refuses", closed)

    async def _recheck(self, context: PayloadContext) -> Refusal | float | None:
        """Re-run the gate on a live session's handshake; its new expiry, or a refusal."""
        decision = await self.auth.evaluate(context, record=False)
        if isinstance(decision, Refusal):
            return decision
        return decision.expires_at

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - bounds the whole stop
        """Graceful stop within ``timeout`` seconds: no new connections, admitted pushes
        finish and are acked, peers are closed with 1001, then the store is closed."""
        if not self._started:
            return
        self._started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.frontend.stop_accepting()
        try:
            async with asyncio.timeout_at(deadline - timeout / 2):
                await self.engine.drain()
        except TimeoutError:
            logger.error("pushes still in flight after %.1f s", timeout / 2)
        await self.frontend.close(max(deadline - loop.time(), 0.5))
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 0.5)):
                await self.engine.drain()
        except TimeoutError:
            logger.error("stopping with pushes still in flight")
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.engine.close()
        await self.store.close()

    # -- metrics --------------------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        counters = self.engine.counters
        yield metrics.labelled_gauge(
            "gateway_connections", "Open client connections.", "transport", counters.connections
        )
        yield metrics.labelled_counter(
            "gateway_connections_opened",
            "Client connections accepted since start.",
            "transport",
            counters.connections_total,
        )
        yield metrics.labelled_counter(
            "gateway_auth_decisions",
            "Sync requests by auth decision (accepted reasons and refusal codes).",
            "reason",
            self.auth.decisions,
        )
        yield metrics.counter(
            "gateway_auth_lockouts",
            "Client IPs locked out after failed attempts.",
            self.auth.lockouts,
        )
        yield metrics.counter(
            "gateway_pushes_accepted",
            "Pushes accepted (durably appended).",
            counters.pushes_accepted,
        )
        yield metrics.counter(
            "gateway_events_accepted",
            "Events accepted (durably appended).",
            counters.events_accepted,
        )
        yield metrics.labelled_counter(
            "gateway_pushes_rejected",
            "Pushes rejected, by reason (server_ahead, backend_mismatch, invalid_batch, storage).",
            "reason",
            counters.pushes_rejected,
        )
        yield metrics.counter(
            "gateway_server_ahead",
            "Pushes answered with ServerAheadError.",
            counters.pushes_rejected["server_ahead"],
        )
        yield metrics.counter(
            "gateway_frames_delivered",
            "Live Chunk frames handed to subscribers.",
            counters.frames_delivered,
        )
        yield metrics.counter(
            "gateway_send_queue_evictions",
            "Connections closed because their send queue overflowed (1013).",
            counters.evictions,
        )
        yield metrics.gauge("gateway_live_subscribers", "Live pulls.", self.hub.subscriber_count())
        yield metrics.gauge(
            "gateway_stores_loaded", "Stores held in memory.", self.engine.stores_loaded
        )
        yield metrics.counter(
            "gateway_stores_unloaded",
            "Stores dropped from memory after store.unload_idle_after without use.",
            counters.stores_unloaded,
        )
        if isinstance(self.store, SqliteStore):
            path = self.store.path
            yield metrics.gauge(
                "gateway_store_size_bytes",
                "Size of the event log on disk (database and WAL).",
                metrics.file_size(path, Path(f"{path}-wal")),
            )
