"""The daemon's loop around a :class:`~gateway.app.Gateway`: signals (SIGTERM/SIGINT stop,
SIGHUP reloads), systemd notifications (READY, RELOADING, STATUS, STOPPING, WATCHDOG) and the
garbage-collector freeze."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.systemd import Notifier

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger("gateway.app")

# Seconds between STATUS= updates to systemd.
STATUS_INTERVAL = 30.0
# Younger collections between two full ones at most (CPython: 10); see serve().
FULL_COLLECTION_GATE = 100


async def serve(
    gateway: Gateway,
    *,
    reload_config: Callable[[], Config] | None = None,
    notifier: Notifier | None = None,
    on_listening: Callable[[Gateway], None] | None = None,
) -> None:
    """Start ``gateway``, serve until SIGTERM / SIGINT (or ``gateway.close()``), then stop.

    SIGHUP calls ``reload_config`` and applies what it returns; a failed reload keeps
    the old configuration and never stops the daemon. Signal handlers are installed
    before anything starts: systemd may reload or stop us the moment READY=1 is out.
    Raises what :meth:`start` raises (OSError: cannot listen; StoreError).
    """
    notifier = notifier or Notifier(env={})
    loop = asyncio.get_running_loop()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in handled[:2]:
        loop.add_signal_handler(sig, gateway.close)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    try:
        await gateway.start()
        # Everything loaded so far (modules, configuration, keys) lives as long as the
        # process: keep it out of every future full collection, whose pause grows with
        # what it traverses.
        gc.collect()
        gc.freeze()
        # CPython runs a full collection whenever the objects that survived into the oldest
        # generation grew by a quarter (and `threshold2` younger collections ran). While
        # connections pile up (a reconnect storm: 19,500 clients back within seconds) that
        # is one every few hundred handshakes, each traversing every connection's objects
        # (~0.3 s at 20k): 18 of them took 43% of the server's CPU in the bench's storm.
        # Gating them by 100 younger collections instead of 10 left 2 (the storm's time
        # went from ~2x the bare server's to ~1x). Cyclic garbage that reached the oldest
        # generation waits longer; connections break their own cycles (transport.ws).
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_GATE)
        if on_listening is not None:
            on_listening(gateway)
        # The store is open and the socket listens: only now is the service ready.
        notifier.ready(gateway.status())
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_reloader(gateway, reloads, reload_config, notifier)),
                group.create_task(notifier.watchdog()),
            ]
            if notifier.enabled:
                tasks.append(group.create_task(_report_status(gateway, notifier)))
            await gateway.stop_requested()
            logger.info("shutting down")
            notifier.stopping()
            for task in tasks:
                task.cancel()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    await gateway.stop()
    notifier.close()
    logger.info("stopped")


async def _reloader(
    gateway: Gateway,
    reloads: asyncio.Queue[None],
    reload_config: Callable[[], Config] | None,
    notifier: Notifier,
) -> None:
    while True:
        await reloads.get()
        if reload_config is None:
            continue
        notifier.reloading()
        try:
            await gateway.reload(reload_config())
        except Exception as exc:  # a failed reload must never take the daemon down
            if not isinstance(exc, ConfigError):
                logger.exception("reload failed unexpectedly")
            logger.error("reload refused, the old configuration stays in force: %s", exc)
            notifier.notify("READY=1", f"STATUS=reload failed: {exc}")
        else:
            notifier.ready(gateway.status())


async def _report_status(gateway: Gateway, notifier: Notifier) -> None:
    while True:
        await asyncio.sleep(STATUS_INTERVAL)
        notifier.status(gateway.status())
