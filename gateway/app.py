"""Composition root: one gateway node built from its configuration.

:class:`Gateway` builds the store, hub, engine, auth gate, push gate, sessions, endpoints,
listener and admin API, and wires them together (nothing else constructs a component). It is
an async context manager (``async with Gateway(config) as gateway``: started, then stopped);
:meth:`run` is the daemon's loop (:mod:`gateway.daemon`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.core import Metric

from gateway import metrics, protocol
from gateway.admin.api import AdminApi
from gateway.admin.revocations import Revocations
from gateway.admin.server import AdminServer
from gateway.admin.service import AdminService
from gateway.admission import Admission, Admitted, PayloadContext, ValidatePayload
from gateway.auth.gate import AuthGate
from gateway.config import Config, LiveConfig, StoreBackend, StoreConfig, parse_listen
from gateway.configfile import load_event_schemas
from gateway.daemon import serve
from gateway.engine import SyncEngine
from gateway.errors import ConfigError, Refusal, StoreError
from gateway.hookcall import Hooks, resolve
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.peer import http_call
from gateway.pushgate import PushGate
from gateway.rules import PushRules, compile_rules
from gateway.store import EventStore
from gateway.store.sqlite import SqliteStore
from gateway.systemd import Notifier
from gateway.transport.endpoints import Endpoints
from gateway.transport.listener import Listener
from gateway.transport.sessions import Sessions, writer_of
from gateway.validation import EventSchemas

logger = logging.getLogger(__name__)

# Settings that need a restart to change; a reload that changes them is refused (rather than
# accepted and silently not applied). Every store setting but unloading is read once, at start.
RESTART_ONLY = (
    ("server", "host"),
    ("server", "port"),
    ("admin", "listen"),
    *(("store", f.name) for f in dataclasses.fields(StoreConfig) if f.name != "unload_idle_after"),
)


def _sqlite(config: StoreConfig) -> EventStore:
    return SqliteStore(config.data_dir, synchronous=config.synchronous)


def _postgres(config: StoreConfig) -> EventStore:
    from gateway.store.postgres import PostgresStore  # asyncpg only when used

    return PostgresStore(
        config.dsn,
        schema=config.postgres_schema,
        pool_min=config.pool_min,
        pool_max=config.pool_max,
        commit_groups=config.commit_groups,
        statement_timeout=config.statement_timeout,
        connect_timeout=config.connect_timeout,
    )


BACKENDS: Mapping[StoreBackend, Callable[[StoreConfig], EventStore]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}
"""The store registry (``[store] backend``); the config's ``StoreBackend`` names its keys."""


class Gateway:
    """One gateway node: ``async with Gateway(config)``, or :meth:`run` as a daemon."""

    def __init__(
        self,
        config: Config,
        *,
        validate_payload: ValidatePayload | None = None,
        store: EventStore | None = None,
    ) -> None:
        self.settings = LiveConfig(config)
        self.metrics = Metrics()
        self.store = store if store is not None else BACKENDS[config.store.backend](config.store)
        self.hub = Hub()
        self.engine = SyncEngine(
            self.store, self.hub, self.metrics, reconcile_interval=config.store.reconcile_interval
        )
        self.auth = AuthGate(config.auth)
        self.push_gate = PushGate(self.auth.wait_push, self.metrics.counters)
        self._apply_rules(
            compile_rules(config.rules), load_event_schemas(config.rules), resolve(config.hooks)
        )
        self.sessions = Sessions(self.settings, self.engine, self.push_gate, self.push_gate)
        self.engine.on_retired = self._retired
        self.revocations = Revocations(
            self.store,
            self.auth.revoked,
            lambda: self.sessions.recheck(self._recheck, why="after a revocation"),
        )
        self.admin = AdminService(
            self.store, self.engine, self.hub, self.sessions, revoke=self.revocations.revoke
        )
        self.admin_server: AdminServer | None = None
        self.endpoints = Endpoints(
            self.settings,
            ready=self.ready,
            closing=self._closing,
            render_metrics=self.metrics.render,
            stats=self.stats,
        )
        self.listener = Listener(
            self.settings,
            validate_payload=validate_payload or self.auth,
            sessions=self.sessions,
            endpoints=self.endpoints,
            http_call=self._http_call,
        )
        self.metrics.add_source(self._collect)
        self._started = False
        self._background: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_requested = asyncio.Event()
        self._closed = asyncio.Event()

    @property
    def config(self) -> Config:
        """The configuration in force (it changes on reload)."""
        return self.settings.current

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.revocations.load()
            dropped = await self.admin.drop_unfinished_imports()
            if dropped:
                logger.warning("removed %d imports a stop interrupted", dropped)
            await self.listener.start()
        except BaseException:
            await self.store.close()
            raise
        if self.config.admin.token:
            await self._start_admin()
        self.sessions.start()
        loop = asyncio.get_running_loop()
        if self.engine.shared:
            self._background.append(loop.create_task(self.engine.reconcile_forever()))
            self._background.append(
                loop.create_task(
                    self.revocations.reload_forever(lambda: self.config.store.reconcile_interval)
                )
            )
            listen = getattr(self.store, "set_revocation_listener", None)
            if listen is not None:
                listen(lambda: self._spawn(self.revocations.reload()))
            hear = getattr(self.store, "set_disconnect_listener", None)
            if hear is not None:
                hear(self.admin.disconnect_here)
        self._background.append(loop.create_task(self._unload_forever()))
        self._started = True

    async def _start_admin(self) -> None:
        """The admin API on its own listener (only when an admin token is configured)."""
        host, port = parse_listen(self.config.admin.listen)
        api = AdminApi(self.settings, self.admin, self.auth.failures)
        self.admin_server = AdminServer(api, host, port, ssl_context=self.listener.tls)
        try:
            await self.admin_server.start()
        except BaseException:
            await self.listener.close(1.0)
            await self.store.close()
            raise
        logger.info("admin API listening on %s", self.admin_server.url)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return int(self.listener.sockets[0].getsockname()[1])

    @property
    def scheme(self) -> str:
        """``wss`` with TLS, else ``ws``."""
        return self.listener.scheme

    @property
    def host(self) -> str:
        return str(self.listener.sockets[0].getsockname()[0])

    def _closing(self) -> bool:
        return self.listener.closing

    async def ready(self) -> bool:
        """Whether the store answers; any failure of the check means "not ready" (503)."""
        try:
            await self.store.check()
        except StoreError:
            return False
        except Exception:
            logger.exception("readiness check failed unexpectedly")
            return False
        return True

    def status(self) -> str:
        return (
            f"ready: {self.sessions.counters.connections['ws']} ws peers, "
            f"{self.hub.subscriber_count()} live pulls, {self.engine.stores_loaded} stores"
        )

    def stats(self) -> dict[str, object]:
        """Connections per store and per subject (``GET /stats``, ``gateway stats``)."""
        by_store, by_subject = self.sessions.by_store_and_subject()
        return {
            "connections": {
                "ws": sum(by_store.values()),
                "http": self.sessions.counters.connections["http"],
            },
            "stores": dict(by_store.most_common()),
            "subjects": dict(by_subject.most_common()),
            "live_subscribers": self.hub.subscriber_count(),
            "stores_loaded": self.engine.stores_loaded,
            "pushes_accepted": self.engine.counters.pushes_accepted,
            "events_accepted": self.engine.counters.events_accepted,
        }

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retired(self, store_id: str, what: str) -> None:
        """A store was reset or deleted (here or on another node): its clients reconnect."""
        reason = {"reset": "store reset", "import": "store imported"}.get(what, "store deleted")
        self.sessions.disconnect(store_id=store_id, reason=reason)

    async def _http_call(self, admitted: Admitted, request: protocol.Request) -> list[bytes]:
        gate = self.push_gate
        return await http_call(
            self.engine,
            admitted.target.store_id,
            request,
            functools.partial(gate, admitted),
            writer_of(admitted.admission),
            functools.partial(gate.check_pull, admitted) if gate.pulls_checked else None,
        )

    def _apply_rules(self, rules: PushRules, schemas: EventSchemas, hooks: Hooks) -> None:
        """Put push rules, event schemas and hooks in force: the gate judges with them,
        admissions keep the claims the rules read (all of them for a hook)."""
        if hooks.active:
            rules = dataclasses.replace(rules, all_claims=True)
        self.push_gate.rules = rules
        self.push_gate.schemas = schemas
        self.push_gate.hooks = hooks
        self.auth.push_rules = rules

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

        Live: auth policy and keys, push rules, event schemas, hooks, bypass token, grace
        window, limits, keepalive and timeouts, store unloading, log level, metrics (README,
        "Lifecycle", says what each does to open sessions). Sessions whose credentials the new
        policy refuses are closed (4003, or 4001 when the token is merely expired). Raises
        ConfigError, changing nothing, when ``new`` changes a restart-only setting or its keys,
        schemas or hooks cannot be loaded.
        """
        for section, key in RESTART_ONLY:
            if getattr(getattr(new, section), key) != getattr(getattr(self.config, section), key):
                raise ConfigError(f"{section}.{key}: changing it needs a restart")
        old_tls, new_tls = self.config.server.tls_cert_file, new.server.tls_cert_file
        if bool(old_tls) != bool(new_tls):
            raise ConfigError("server.tls_cert_file: turning TLS on or off needs a restart")
        # Certificate renewals: new handshakes present the new chain (ConfigError if broken,
        # and then the old chain and the old configuration stay).
        self.listener.reload_tls(new.server.tls_cert_file, new.server.tls_key_file)
        rules = compile_rules(new.rules)
        schemas = load_event_schemas(new.rules)
        hooks = resolve(new.hooks, reload=True)  # re-imports the hooks' modules
        self.auth.apply(new.auth)  # raises ConfigError before anything else changed
        self._apply_rules(rules, schemas, hooks)
        self.settings.swap(new)
        logger.info("configuration reloaded")
        logging.getLogger().setLevel(new.log.level.upper())
        self.sessions.apply_limits()
        closed = await self.sessions.recheck(self._recheck)
        if closed:
            logger.warning("closed %d sessions the new configuration refuses", closed)

    async def _recheck(self, context: PayloadContext) -> Refusal | Admission:
        """Re-run the gate on a live session's handshake: a refusal, or what it now admits
        (its expiry and the claims the push rules read are taken from it)."""
        return await self.auth.evaluate(context, record=False)

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Ask :meth:`run` to stop (what SIGTERM does)."""
        self._stop_requested.set()

    async def wait_closed(self) -> None:
        """Wait until the gateway has stopped."""
        await self._closed.wait()

    async def stop(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - bounds the whole stop
        """Graceful stop within ``timeout`` seconds: no new connections, admitted pushes
        finish and are acked, peers are closed with 1001, then the store is closed."""
        if not self._started:
            return
        self._started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.listener.stop_accepting()
        if self.admin_server is not None:
            await self.admin_server.close()
        self.sessions.stop()
        try:
            async with asyncio.timeout_at(deadline - timeout / 2):
                await self.engine.drain()
        except TimeoutError:
            logger.error("pushes still in flight after %.1f s", timeout / 2)
        await self.listener.close(max(deadline - loop.time(), 0.5))
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
        self._closed.set()

    # -- the daemon -----------------------------------------------------------------------

    async def run(
        self,
        *,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        on_listening: Callable[[Gateway], None] | None = None,
    ) -> None:
        """Start, serve until SIGTERM / SIGINT (or :meth:`close`), then stop (the daemon's
        loop: :func:`gateway.daemon.serve`)."""
        await serve(self, reload_config=reload_config, notifier=notifier, on_listening=on_listening)

    async def stop_requested(self) -> None:
        """Wait until :meth:`close` (SIGTERM) asked the gateway to stop."""
        await self._stop_requested.wait()

    # -- metrics ---------------------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        yield from metrics.families(
            engine=self.engine.counters,
            sessions=self.sessions.counters,
            decisions=self.auth.decisions,
            lockouts=self.auth.lockouts,
            live_subscribers=self.hub.subscriber_count(),
            stores_loaded=self.engine.stores_loaded,
            handshakes_pending=self.listener.pending_handshakes(),
        )
        if isinstance(self.store, SqliteStore):
            path = self.store.path
            yield metrics.gauge(
                "gateway_store_size_bytes",
                "Size of the event log on disk (database and WAL).",
                metrics.file_size(path, Path(f"{path}-wal")),
            )
