"""Command line: ``gateway serve [--config FILE] [--host H] [--port P] [--data-dir DIR]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import uvloop

from gateway import __version__
from gateway.app import Gateway
from gateway.config import Config, ConfigError, load_config

logger = logging.getLogger("gateway")

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="LiveStore sync server")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sync server")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--host", help="listen address (overrides [server] host)")
    serve.add_argument("--port", type=int, help="listen port; 0 picks a free one")
    serve.add_argument("--data-dir", help="directory of the SQLite log (overrides [store])")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    store: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.data_dir is not None:
        store["data_dir"] = args.data_dir
    return {"server": server, "store": store}


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log.level.upper(),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # websockets logs handshake details at INFO/DEBUG; our own lines replace them.
    logging.getLogger("gateway.websockets").setLevel(logging.WARNING)


async def _serve(config: Config) -> int:
    gateway = Gateway(config)
    try:
        await gateway.start()
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", config.server.host, config.server.port, exc)
        return EXIT_STARTUP
    host = gateway.host
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on ws://{shown}:{gateway.port}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("shutting down")
    await gateway.stop()
    logger.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config)
    if args.command == "serve":
        return uvloop.run(_serve(config))
    return 1  # pragma: no cover - argparse enforces a command
