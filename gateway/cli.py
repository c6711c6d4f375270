"""Command line: ``gateway serve`` runs the server; ``gateway token`` mints and decodes JWTs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
import uvloop

from gateway import __version__
from gateway.app import Gateway
from gateway.config import HMAC_ALGORITHMS, Config, ConfigError, load_config, parse_duration

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

    token = commands.add_parser("token", help="mint or inspect JWTs")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    mint = token_commands.add_parser("mint", help="sign a JWT with the configured key")
    mint.add_argument("--config", help="TOML configuration file (for the key and claims)")
    mint.add_argument("--sub", required=True, help="the subject")
    mint.add_argument("--ttl", default="1h", help="lifetime, e.g. 90s, 15m, 1h, 7d (default 1h)")
    mint.add_argument("--stores", help="comma-separated storeIds or globs for the stores claim")
    mint.add_argument(
        "--claim", action="append", default=[], metavar="K=V", help="extra claim (V as JSON)"
    )
    mint.add_argument("--private-key", help="PEM private key for RS*/PS*/ES*/EdDSA signing")
    mint.add_argument("--alg", help="algorithm (default: the first configured one)")
    decode = token_commands.add_parser("decode", help="show a JWT's header and claims, unverified")
    decode.add_argument("token")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    store: dict[str, Any] = {}
    if args.command != "serve":
        return {}
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


def _claim_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _mint(args: argparse.Namespace, config: Config) -> int:
    auth = config.auth
    algorithm = args.alg or auth.algorithms[0]
    try:
        ttl = parse_duration(args.ttl)
    except ValueError:
        print(f"gateway: --ttl: not a duration: {args.ttl!r}", file=sys.stderr)
        return EXIT_CONFIG
    now = int(time.time())
    claims: dict[str, object] = {auth.subject_claim: args.sub, "iat": now, "exp": now + int(ttl)}
    if auth.audience:
        claims["aud"] = auth.audience
    if auth.issuer:
        claims["iss"] = auth.issuer
    if auth.required_type:
        claims["type"] = auth.required_type
    if args.stores:
        claims[auth.stores_claim or "stores"] = [s.strip() for s in args.stores.split(",")]
    for item in args.claim:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"gateway: --claim expects K=V, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        claims[name] = _claim_value(value)
    if algorithm in HMAC_ALGORITHMS:
        if not auth.jwt_secret:
            print("gateway: no auth.jwt_secret configured (JWT_SECRET)", file=sys.stderr)
            return EXIT_CONFIG
        key: str | bytes = auth.jwt_secret
    else:
        if not args.private_key:
            print(f"gateway: {algorithm} needs --private-key", file=sys.stderr)
            return EXIT_CONFIG
        key = Path(args.private_key).read_bytes()
    print(jwt.encode(claims, key, algorithm=algorithm))
    return 0


def _decode(args: argparse.Namespace) -> int:
    try:
        header = jwt.get_unverified_header(args.token)
        claims = jwt.decode(args.token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        print(f"gateway: not a JWT: {exc}", file=sys.stderr)
        return 1
    shown: dict[str, object] = {"header": header, "claims": claims, "verified": False}
    exp = claims.get("exp")
    if isinstance(exp, int | float):
        shown["expires_in_seconds"] = round(exp - time.time())
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token" and args.token_command == "decode":  # noqa: S105 - a subcommand name
        return _decode(args)
    try:
        config = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "token":
        return _mint(args, config)
    _setup_logging(config)
    if args.command == "serve":
        return uvloop.run(_serve(config))
    return 1  # pragma: no cover - argparse enforces a command
