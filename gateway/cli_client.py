"""The client commands of the command line, built on :mod:`gateway.client`: ``tail``, ``push``
and ``store export``.

They connect as an internal service with the server bypass token of the configuration
(``SERVER_BYPASS_TOKEN``, ``GATEWAY_AUTH_BYPASS_TOKEN``, ``auth.bypass_token_file`` or the
``bypass_token`` systemd credential); without one they connect without a credential, which a
development server accepts. The token never appears in their output or error messages (it
travels in the sync URL's payload, so every message that could hold the URL is scrubbed).

``tail`` and ``store export`` write one JSON object per line (:func:`event_line`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from typing import Any, Final
from urllib.parse import quote, quote_plus, urlsplit

import orjson
import uvloop

from gateway.client import (
    BackendIdMismatch,
    Batch,
    ClientError,
    ConnectionClosed,
    Cursor,
    Event,
    Refused,
    StoreClient,
    connect,
)
from gateway.config import Config

# Exit statuses (README "Operations / Command line").
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the server failed the request or closed the session for good
EXIT_USAGE: Final = 2  # bad arguments or configuration (argparse uses 2 too)
EXIT_REFUSED: Final = 4  # the server refused the credential at the handshake (401/403/429)
EXIT_UNREACHABLE: Final = 5  # no session, or no progress, within --timeout
EXIT_RESET: Final = 6  # --from N:BACKENDID names another backendId: the store was reset

# Events per commit of `push`: its seqNums are printed as each commit is acknowledged (a
# push of the sync protocol holds at most 100 events).
PUSH_BATCH: Final = 100

# A backendId no store has: the server answers with its own (BackendIdMismatchError), which
# turns a bare ``--from N`` into a cursor.
_PROBE: Final = "?"


class CommandError(Exception):
    """A failure with its exit status and a one-line message for stderr."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def position(text: str) -> int | Cursor:
    """The ``--from`` value: a seqNum ``N``, or a cursor ``N:BACKENDID`` (which also checks that
    the store was not reset since); for argparse."""
    if text.isdigit():
        return int(text)
    try:
        return Cursor.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N:BACKENDID, got {text!r}") from None


def base_url(url: str | None, config: Config) -> str:
    """The server's base URL: ``url``, else the configured listener (``wss`` with TLS).

    Raises:
        CommandError: ``url`` is not an absolute ws/wss/http/https URL without a query.
    """
    if not url:
        host = config.server.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reaching a daemon that listens everywhere
            host = "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        scheme = "wss" if config.server.tls_cert_file else "ws"
        return f"{scheme}://{shown}:{config.server.port}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise CommandError(EXIT_USAGE, f"--url: not a URL: {url!r}") from None
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise CommandError(
            EXIT_USAGE,
            f"--url: expected ws://, wss://, http:// or https://HOST[:PORT], got {url!r}",
        )
    if parts.query or parts.fragment:
        raise CommandError(EXIT_USAGE, f"--url: must not have a query or fragment: {url!r}")
    return url.rstrip("/")


def event_line(event: Event, backend_id: str) -> bytes:
    """One line of ``tail`` and ``store export``: the event as LiveStore encodes it
    (``name``, ``args``, ``seqNum``, ``parentSeqNum``, ``clientId``, ``sessionId``), then
    ``createdAt`` when the server recorded it and the ``backendId`` of the log."""
    record: dict[str, Any] = {
        "name": event.name,
        "args": event.args,
        "seqNum": event.seq_num,
        "parentSeqNum": event.parent_seq_num,
        "clientId": event.client_id,
        "sessionId": event.session_id,
    }
    if event.created_at is not None:
        record["createdAt"] = event.created_at
    record["backendId"] = backend_id
    if event.writer is not None:
        record["writer"] = {
            "subject": event.writer.subject,
            "instanceId": event.writer.instance_id,
            "reason": event.writer.reason,
            "receivedAt": event.created_at,
        }
    return orjson.dumps(record) + b"\n"


class Session:
    """What the commands share: the server, the store, the credential, the timeout."""

    def __init__(self, args: argparse.Namespace, config: Config) -> None:
        self.token = config.auth.bypass_token or None
        self.url = base_url(args.url, config)
        self.store_id: str = args.store
        self.timeout: float = args.timeout
        self.instance_id = f"gateway-{args.command}"

    @asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[StoreClient]:
        """The client of the store, its session open (the client retries with backoff until
        ``--timeout``); ``options`` go to :func:`gateway.client.connect`.

        Raises:
            CommandError: No session within ``--timeout`` (:data:`EXIT_UNREACHABLE`).
            Refused: The server refused the credential.
        """
        store = connect(
            self.url,
            self.store_id,
            bypass_token=self.token,
            instance_id=self.instance_id,
            **options,
        )
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await store.__aenter__()
            except TimeoutError:
                raise CommandError(
                    EXIT_UNREACHABLE, f"cannot connect to {self.url} within {self.timeout:g}s"
                ) from None
            yield store
        finally:
            await store.close()

    def stalled(self, doing: str) -> CommandError:
        return CommandError(EXIT_UNREACHABLE, f"{self.url}: {doing} within {self.timeout:g}s")


def scrub(text: str, token: str | None) -> str:
    """``text`` without ``token``, in any of the encodings the sync URL gives it."""
    if token:
        once = quote(token, safe="")
        for form in (quote(once, safe=""), quote_plus(once), once, token):
            text = text.replace(form, "<redacted>")
    return text


async def _batches(
    store: StoreClient, after: int | Cursor, *, live: bool
) -> AsyncGenerator[Batch, None]:
    """The store's batches after ``after``; a bare seqNum learns the backendId first."""
    cursor = after if isinstance(after, Cursor) else None
    if isinstance(after, int) and after > 0:
        try:
            async with aclosing(store.events(Cursor(_PROBE, after), live=False)) as probe:
                async for _ in probe:
                    break
        except BackendIdMismatch as exc:
            cursor = Cursor(exc.expected, after)
        else:  # pragma: no cover - a server that accepts a backendId no store has
            raise CommandError(EXIT_FAILED, "the server accepted an unknown backendId")
    async with aclosing(store.events(cursor, live=live)) as stream:
        async for batch in stream:
            yield batch


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


async def tail(args: argparse.Namespace, session: Session) -> int:
    """``gateway tail``: print the store's events after ``--from`` and then each new one, as
    JSON lines, until interrupted; reconnects (with backoff) when the session drops."""
    async with session.open() as store, aclosing(_batches(store, args.after, live=True)) as stream:
        async for batch in stream:
            _write(b"".join(event_line(e, batch.cursor.backend_id) for e in batch.events))
    return EXIT_OK  # pragma: no cover - a live stream ends only with an error


async def export(args: argparse.Namespace, session: Session) -> int:
    """``gateway store export``: write the store's log after ``--from`` as JSON lines up to
    its head, in constant memory; no batch for ``--timeout`` seconds fails."""
    loop = asyncio.get_running_loop()
    async with session.open() as store:
        try:
            async with asyncio.timeout(session.timeout) as deadline:
                async with aclosing(_batches(store, args.after, live=False)) as stream:
                    async for batch in stream:
                        lines = (event_line(e, batch.cursor.backend_id) for e in batch.events)
                        _write(b"".join(lines))
                        deadline.reschedule(loop.time() + session.timeout)
        except TimeoutError:
            raise session.stalled("no events") from None
    return EXIT_OK


def _pushed_events(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The ``(name, args)`` pairs to push, from the flags or from stdin (all read and checked
    before anything is pushed)."""
    if args.stdin:
        if args.name is not None or args.args is not None:
            raise CommandError(EXIT_USAGE, "push: --stdin excludes --name and --args")
        events: list[tuple[str, Any]] = []
        for number, line in enumerate(sys.stdin.buffer, start=1):
            if line.strip():
                events.append(_parse_event(line, f"stdin line {number}"))
        return events
    if args.name is None or args.args is None:
        raise CommandError(EXIT_USAGE, "push: give --name and --args, or --stdin")
    return [(args.name, _parse_json(args.args, "--args"))]


def _parse_json(text: str | bytes, where: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CommandError(EXIT_USAGE, f"{where}: not JSON: {exc}") from None


def _parse_event(line: bytes, where: str) -> tuple[str, Any]:
    item = _parse_json(line, where)
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "args" not in item:
        raise CommandError(EXIT_USAGE, f'{where}: expected {{"name": "...", "args": ...}}')
    return item["name"], item["args"]


async def push(args: argparse.Namespace, session: Session) -> int:
    """``gateway push``: commit events (numbered after the server's head, rebased when another
    writer got there first) and print the final seqNum of each, one per line, as each batch of
    :data:`PUSH_BATCH` events is acknowledged (``--timeout`` bounds each wait)."""
    events = _pushed_events(args)
    options = {"client_id": args.client_id} if args.client_id else {}
    async with session.open(**options) as store:
        for start in range(0, len(events), PUSH_BATCH):
            try:
                async with asyncio.timeout(session.timeout):
                    seqs = await store.commit_many(events[start : start + PUSH_BATCH])
            except TimeoutError:
                raise session.stalled(
                    f"no acknowledgement of events {start + 1}.. (they may be written)"
                ) from None
            _write(b"".join(b"%d\n" % seq for seq in seqs))
    return EXIT_OK


Command = Callable[[argparse.Namespace, Session], Coroutine[Any, Any, int]]


def run(command: Command, args: argparse.Namespace, config: Config) -> int:
    """Run a client command; map its failures to an exit status and one line on stderr."""
    token = config.auth.bypass_token or None
    try:
        session = Session(args, config)
    except CommandError as exc:
        print(f"gateway: {scrub(str(exc), token)}", file=sys.stderr)
        return exc.status
    try:
        return uvloop.run(command(args, session))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python's exit flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except CommandError as exc:
        status, message = exc.status, str(exc)
    except Refused as exc:
        status, message = EXIT_REFUSED, f"{session.url}: {exc}"
    except BackendIdMismatch as exc:
        status = EXIT_RESET
        message = (
            f"the store's backendId is {exc.expected}, not {exc.received}: "
            "it was reset since (or the cursor is another store's)"
        )
    except ConnectionClosed as exc:
        status, message = EXIT_FAILED, f"{session.url}: the server ended the session: {exc}"
    except ClientError as exc:
        status, message = EXIT_FAILED, f"{session.url}: {exc}"
    except Exception as exc:  # one scrubbed line instead of a traceback
        status, message = EXIT_FAILED, f"{type(exc).__name__}: {exc}"
    print(f"gateway: {scrub(message, token)}", file=sys.stderr)
    return status
