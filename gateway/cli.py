"""Command line: parse arguments, call the right function, map failures to exit codes.

``gateway serve`` hands over to :meth:`gateway.app.Gateway.run`; ``tail``, ``push`` and
``store export`` are internal-service clients (:mod:`gateway.cli_client`); ``token`` mints and
decodes JWTs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
import uvloop

from gateway import __version__, cli_admin, cli_client, hookcall, log
from gateway.app import Gateway
from gateway.backup import DATABASE_NAME, BackupError, backup
from gateway.cli_client import position
from gateway.config import HMAC_ALGORITHMS, Config
from gateway.configfile import (
    SECRET_KEYS,
    as_dict,
    load_config,
    load_event_schemas,
    parse_duration,
)
from gateway.errors import ConfigError, StoreError
from gateway.migrate import MigrationError, SqliteSource, migrate
from gateway.systemd import Notifier

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

    check = commands.add_parser("check-config", help="validate and print the configuration")
    check.add_argument("--config", help="TOML configuration file")

    stats = commands.add_parser("stats", help="connections per store and subject (running daemon)")
    stats.add_argument("--config", help="TOML configuration file (for the bypass token)")
    stats.add_argument("--url", help="the daemon's base URL (default: from the configuration)")

    tail = _client_command(commands, "tail", "print a store's events as they are accepted")
    tail.add_argument("--store", required=True, help="the storeId")
    tail.add_argument(
        "--from", dest="after", type=position, default=0, help="start after this seqNum"
    )

    push = _client_command(commands, "push", "commit events; print their seqNums")
    push.add_argument("--store", required=True, help="the storeId")
    push.add_argument("--name", help="the event's name (todoCreated-v1)")
    push.add_argument("--args", help="the event's arguments, as JSON")
    push.add_argument(
        "--stdin",
        action="store_true",
        help='events from stdin, {"name":…, "args":…} per line',
    )
    push.add_argument("--client-id", help="the clientId the events carry (default: random)")

    store = commands.add_parser("store", help="a store's data")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    export = _client_command(store_commands, "export", "write a store's log as JSON lines")
    export.add_argument("store", help="the storeId")
    export.add_argument(
        "--from", dest="after", type=position, default=0, help="only events after this seqNum"
    )

    cli_admin.add_commands(commands, store_commands)

    backup = commands.add_parser(
        "backup", help="copy the SQLite log consistently, while the server runs"
    )
    backup.add_argument("--to", required=True, type=Path, help="the backup file to create")
    backup.add_argument("--config", help="TOML configuration file (for the data directory)")
    backup.add_argument("--data-dir", help="directory of the SQLite log (overrides [store])")
    backup.add_argument("--force", action="store_true", help="replace the backup file if it exists")

    move = commands.add_parser("migrate", help="copy every store from SQLite to PostgreSQL")
    move.add_argument("--to", required=True, help="the PostgreSQL DSN (postgresql://…)")
    move.add_argument("--config", help="TOML configuration file (data directory, schema)")
    move.add_argument("--data-dir", help="directory of the SQLite log (overrides [store])")
    move.add_argument("--schema", help="PostgreSQL schema (default: store.postgres_schema)")

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


def _client_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str
) -> argparse.ArgumentParser:
    """A subcommand that connects to the daemon as an internal service (cli_client)."""
    command = commands.add_parser(name, help=help_)
    command.add_argument("--config", help="TOML configuration file (for the bypass token)")
    command.add_argument("--url", help="the daemon's base URL (default: from the configuration)")
    command.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds allowed to connect, and between answers (default 30)",
    )
    return command


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


def _listening(gateway: Gateway) -> None:
    host = gateway.host
    shown = f"[{host}]" if ":" in host else host
    log.flush()  # what was logged before it comes before it
    print(f"listening on {gateway.scheme}://{shown}:{gateway.port}", file=sys.stderr, flush=True)


async def _serve(args: argparse.Namespace, config: Config) -> int:
    try:
        gateway = Gateway(config)
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        return EXIT_CONFIG
    log.bind(asyncio.get_running_loop())
    try:
        await gateway.run(
            reload_config=lambda: load_config(args.config, overrides=_overrides(args)),
            notifier=Notifier(),
            on_listening=_listening,
        )
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", config.server.host, config.server.port, exc)
        return EXIT_STARTUP
    except StoreError as exc:
        logger.error("cannot open the store: %s", exc)
        return EXIT_STARTUP
    finally:
        log.unbind()
    return 0


def _check_config(config: Config) -> int:
    try:
        # What the start would refuse too: a broken schema file, a hook that cannot be imported.
        load_event_schemas(config.rules)
        hookcall.resolve(config.hooks)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    shown = as_dict(config)
    for section, key in SECRET_KEYS:
        if shown[section][key]:
            shown[section][key] = "<redacted>"
    print(json.dumps(shown, indent=2))
    return 0


def _base_url(args: argparse.Namespace, config: Config, scheme: str) -> str:
    if args.url:
        url = str(args.url).rstrip("/")
        if scheme == "ws":
            url = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return url
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reaching a daemon that listens everywhere
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{config.server.port}"


def _stats(args: argparse.Namespace, config: Config) -> int:
    url = _base_url(args, config, "http") + "/stats"
    request = urllib.request.Request(url)  # noqa: S310 - http(s) URL of the operator's daemon
    if config.auth.bypass_token:
        request.add_header("Authorization", f"Bearer {config.auth.bypass_token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            data = json.loads(response.read())
    except (OSError, ValueError) as exc:
        print(f"gateway: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2))
    return 0


def _backup(args: argparse.Namespace, config: Config) -> int:
    if args.data_dir is None and config.store.backend != "sqlite":
        print(
            f"gateway: the store backend is {config.store.backend}: back it up with its own "
            "tools (pg_dump); gateway backup copies the SQLite log",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    source = Path(args.data_dir or config.store.data_dir) / DATABASE_NAME
    try:
        report = backup(source, args.to, overwrite=args.force)
    except BackupError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    print(
        f"backup written to {report.path}: stores={report.stores} events={report.events} "
        f"bytes={report.size}"
    )
    return 0


async def _migrate(args: argparse.Namespace, config: Config) -> int:
    from gateway.store.postgres import PostgresStore  # asyncpg only when used

    schema = args.schema or config.store.postgres_schema
    source_path = Path(args.data_dir or config.store.data_dir) / DATABASE_NAME
    try:
        source = SqliteSource(source_path)
    except MigrationError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    try:
        target = PostgresStore(args.to, schema=schema, pool_min=1, pool_max=2)
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        source.close()
        return EXIT_CONFIG
    try:
        await target.open()
        report = await migrate(source, target, now=time.time())
    except (MigrationError, StoreError) as exc:
        # A StoreError may quote the driver; the DSN (and its password) is never in it.
        print(f"gateway: migration stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        source.close()
        await target.close()
    print(
        f"migrated to PostgreSQL schema {schema}: stores={report.stores} "
        f"events={report.events} copied={report.copied} revocations={report.revocations}; "
        "verified (heads, counts, checksums)"
    )
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
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "stats":
        return _stats(args, config)
    if args.command == "backup":
        return _backup(args, config)
    if args.command == "migrate":
        return uvloop.run(_migrate(args, config))
    log.setup(config.log.level, config.log.format)
    if args.command == "tail":
        return cli_client.run(cli_client.tail, args, config)
    if args.command == "push":
        return cli_client.run(cli_client.push, args, config)
    if cli_admin.handles(args):
        return cli_admin.run(args, config)
    if args.command == "store" and args.store_command == "export":
        return cli_client.run(cli_client.export, args, config)
    if args.command == "serve":
        return uvloop.run(_serve(args, config))
    return 1  # pragma: no cover - argparse enforces a command
