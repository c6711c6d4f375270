"""The operator's commands on the admin API (README, "Administration"): ``stores``,
``store show|reset|delete``, ``sessions`` and ``disconnect``.

Each takes ``--url`` (else the configured ``admin.listen``) and ``--config``, and reads the
admin token from ``GATEWAY_ADMIN_TOKEN`` or the configuration (``admin.token_file``, the
``admin_token`` systemd credential). Destructive commands ask for confirmation unless
``--yes``; without a terminal they refuse to guess. Any failure exits non-zero with the
server's code in its one-line message; the token never appears.
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final, TextIO
from urllib.parse import quote, urlencode

from gateway.cli_client import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from gateway.config import Config, parse_listen
from gateway.errors import RefusalCode

EXIT_NOT_FOUND: Final = 7  # the store does not exist (404 STORE_NOT_FOUND)

SubParsers = argparse._SubParsersAction


class AdminError(Exception):
    """A failed admin request: its exit status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def add_commands(
    commands: SubParsers[argparse.ArgumentParser],
    store_commands: SubParsers[argparse.ArgumentParser],
) -> None:
    """Register the admin commands (``store`` is the existing ``store`` command group)."""
    stores = _admin(commands, "stores", "list stores (one per line, storeId first)")
    stores.add_argument("--prefix", default="", help="only storeIds starting with this")
    stores.add_argument("--json", action="store_true", help="JSON lines instead of columns")
    show = _admin(store_commands, "show", "a store's head, size, backendId and subscribers")
    show.add_argument("store", help="the storeId")
    for name, what in (("reset", "empty a store's log (new backendId)"), ("delete", "remove")):
        command = _admin(store_commands, name, what)
        command.add_argument("store", help="the storeId")
        command.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    load = _admin(store_commands, "import", "create a store from a JSON-lines log on stdin")
    load.add_argument("store", help="the storeId (must not exist)")
    load.add_argument("--backend-id", help="the store's backendId (default: the log's)")
    sessions = _admin(commands, "sessions", "list open sessions (one per line)")
    disconnect = _admin(commands, "disconnect", "close matching sessions (4004)")
    for command in (sessions, disconnect):
        command.add_argument("--store", help="only sessions of this storeId")
        command.add_argument("--subject", help="only sessions of this subject")
        command.add_argument("--instance", help="only sessions of this instanceId")
    sessions.add_argument("--json", action="store_true", help="JSON lines instead of columns")
    disconnect.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    revoke = _admin(commands, "revoke", "revoke a subject's tokens, or one token (jti)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--sub", help="revoke this subject's tokens issued before --before")
    which.add_argument("--jti", help="revoke the one token with this jti")
    revoke.add_argument(
        "--before", type=when, help="with --sub: tokens issued before this (default: now)"
    )
    revoke.add_argument("--expires", type=when, help="with --jti: when that token expires")
    _admin(commands, "revocations", "list the revocations in force (JSON lines)")


def _admin(
    commands: SubParsers[argparse.ArgumentParser], name: str, help_: str
) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_)
    command.add_argument("--config", help="TOML configuration file (admin token, admin.listen)")
    command.add_argument("--url", help="the admin API's base URL (default: admin.listen)")
    command.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return command


def when(text: str) -> float:
    """A time: seconds since the epoch, or ISO 8601 (``2026-12-04T10:00:00Z``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def handles(args: argparse.Namespace) -> bool:
    """Whether ``args`` is one of the admin commands."""
    if args.command in ("stores", "sessions", "disconnect", "revoke", "revocations"):
        return True
    return args.command == "store" and args.store_command in ("show", "reset", "delete", "import")


def run(args: argparse.Namespace, config: Config, *, stdin: TextIO = sys.stdin) -> int:
    """Run the admin command ``args`` names; its exit status."""
    api = _Api(args, config)
    try:
        if args.command == "stores":
            return _stores(api, args)
        if args.command == "sessions":
            return _sessions(api, args)
        if args.command == "disconnect":
            return _disconnect(api, args, stdin)
        if args.command == "revoke":
            return _revoke(api, args)
        if args.command == "revocations":
            for entry in api.call("GET", "/v1/revocations")["revocations"]:
                print(json.dumps(entry))
            return EXIT_OK
        if args.store_command == "import":
            return _import(api, args, stdin)
        if args.store_command == "show":
            print(json.dumps(api.call("GET", _store_path(args.store)), indent=2))
            return EXIT_OK
        return _destroy(api, args, stdin)
    except AdminError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return exc.status


class _Api:
    def __init__(self, args: argparse.Namespace, config: Config) -> None:
        self.token = config.admin.token
        self.timeout = float(args.timeout)
        if args.url:
            self.base = str(args.url).rstrip("/")
        else:
            host, port = parse_listen(config.admin.listen)
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reaching a wildcard listener
                host = "127.0.0.1"
            scheme = "https" if config.server.tls_cert_file else "http"
            self.base = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return json.loads(self._open(method, path, body).read())

    def upload(self, path: str, stream: BinaryIO, length: int) -> Any:
        """POST ``length`` bytes of ``stream`` (a file: sent as it is read)."""
        return json.loads(self._open("POST", path, stream, length=length).read())

    def _open(self, method: str, path: str, body: Any, *, length: int | None = None) -> Any:
        if not self.token:
            raise AdminError(
                EXIT_USAGE, "no admin token: set GATEWAY_ADMIN_TOKEN or admin.token_file"
            )
        if length is not None:
            data, content_type = body, "application/x-ndjson"
        else:
            data = None if body is None else json.dumps(body).encode()
            content_type = "application/json"
        request = urllib.request.Request(  # noqa: S310 - the operator's own admin URL
            self.base + path, data=data, method=method
        )
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        if length is not None:
            request.add_header("Content-Length", str(length))
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise _failure(exc) from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(EXIT_UNREACHABLE, f"cannot reach {self.base}: {reason}") from None


def _failure(exc: urllib.error.HTTPError) -> AdminError:
    try:
        error = json.loads(exc.read())["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "", exc.reason
    status = {401: EXIT_REFUSED, 403: EXIT_REFUSED, 429: EXIT_REFUSED, 404: EXIT_FAILED}.get(
        exc.code, EXIT_FAILED
    )
    if code == RefusalCode.STORE_NOT_FOUND:
        status = EXIT_NOT_FOUND
    return AdminError(status, f"HTTP {exc.code} {code}: {message}".replace(" : ", ": "))


def _store_path(store_id: str, suffix: str = "") -> str:
    return f"/v1/stores/{quote(store_id, safe='')}{suffix}"


def _when(value: float | None, *, ms: bool = False) -> str:
    if value is None:
        return "-"
    seconds = value / 1000 if ms else value
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _stores(api: _Api, args: argparse.Namespace) -> int:
    after = ""
    while True:
        query = urlencode({"prefix": args.prefix, "after": after, "limit": 1000})
        page = api.call("GET", f"/v1/stores?{query}")
        for store in page["stores"]:
            if args.json:
                print(json.dumps(store))
            else:
                print(
                    "\t".join(
                        (
                            store["storeId"],
                            f"head={store['head']}",
                            f"bytes={store['bytes']}",
                            f"live={store['liveSubscribers']}",
                            f"last_write={_when(store['lastWriteAt'], ms=True)}",
                            f"backend={store['backendId']}",
                        )
                    )
                )
        if page["next"] is None:
            return EXIT_OK
        after = page["next"]


def _filters(args: argparse.Namespace) -> dict[str, str]:
    return {
        key: value
        for key, value in (
            ("store", args.store),
            ("subject", args.subject),
            ("instance", args.instance),
        )
        if value is not None
    }


def _sessions(api: _Api, args: argparse.Namespace) -> int:
    sessions = api.call("GET", f"/v1/sessions?{urlencode(_filters(args))}")["sessions"]
    for session in sessions:
        if args.json:
            print(json.dumps(session))
            continue
        print(
            "\t".join(
                (
                    session["subject"],
                    f"store={session['storeId']}",
                    f"instance={session['instanceId'] or '-'}",
                    f"transport={session['transport']}",
                    f"remote={session['remoteAddr'] or '-'}",
                    f"since={_when(session['connectedAt'])}",
                    f"expires={_when(session['expiresAt'])}",
                )
            )
        )
    return EXIT_OK


def _confirm(args: argparse.Namespace, stdin: TextIO, question: str, answer: str) -> None:
    """Ask unless ``--yes``; the operator types ``answer`` to go ahead."""
    if args.yes:
        return
    if not stdin.isatty():
        raise AdminError(EXIT_USAGE, f"{question}: not a terminal; pass --yes to confirm")
    print(f"{question}\nType {answer!r} to confirm: ", end="", file=sys.stderr, flush=True)
    if stdin.readline().strip() != answer:
        raise AdminError(EXIT_FAILED, "not confirmed; nothing done")


def _destroy(api: _Api, args: argparse.Namespace, stdin: TextIO) -> int:
    shown = api.call("GET", _store_path(args.store))
    verb = "reset" if args.store_command == "reset" else "delete"
    _confirm(
        args,
        stdin,
        f"{verb.capitalize()} store {args.store!r} ({shown['head']} events, "
        f"{shown['liveSubscribers']} live subscribers here)? Its clients reset their data.",
        args.store,
    )
    if verb == "reset":
        done = api.call("POST", _store_path(args.store, "/reset"))
        print(f"reset {args.store}: backendId={done['backendId']}")
    else:
        api.call("DELETE", _store_path(args.store))
        print(f"deleted {args.store}")
    return EXIT_OK


def _import(api: _Api, args: argparse.Namespace, stdin: TextIO) -> int:
    """Spool stdin to a temporary file (the API needs the length up front), then send it."""
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(stdin.buffer, spool, 1024 * 1024)
        length = spool.tell()
        spool.seek(0)
        query = f"?{urlencode({'backendId': args.backend_id})}" if args.backend_id else ""
        done = api.upload(_store_path(args.store, "/import") + query, spool, length)
    print(f"imported {done['storeId']}: head={done['head']} backendId={done['backendId']}")
    return EXIT_OK


def _revoke(api: _Api, args: argparse.Namespace) -> int:
    if args.sub is not None:
        if args.expires is not None:
            raise AdminError(EXIT_USAGE, "--expires goes with --jti (--sub takes --before)")
        body: dict[str, Any] = {"subject": args.sub}
        if args.before is not None:
            body["before"] = args.before
    else:
        if args.before is not None:
            raise AdminError(EXIT_USAGE, "--before goes with --sub (--jti takes --expires)")
        body = {"jti": args.jti}
        if args.expires is not None:
            body["expiresAt"] = args.expires
    done = api.call("POST", "/v1/revocations", body)
    entry = done["revocation"]
    what = (
        f"subject {entry['subject']} before {_when(entry['before'])}"
        if args.sub
        else (f"jti {entry['jti']}")
    )
    print(
        f"revoked {what}; kept until {_when(entry['expiresAt'])}; closed {done['closed']} sessions"
    )
    return EXIT_OK


def _disconnect(api: _Api, args: argparse.Namespace, stdin: TextIO) -> int:
    filters = _filters(args)
    if not filters:
        raise AdminError(EXIT_USAGE, "disconnect needs --store, --subject or --instance")
    shown = " ".join(f"{key}={value}" for key, value in filters.items())
    _confirm(args, stdin, f"Disconnect every session with {shown}?", "yes")
    closed = api.call("POST", "/v1/sessions/disconnect", filters)["closed"]
    print(f"closed {closed} sessions")
    return EXIT_OK
