"""The client commands (``gateway push``, ``gateway store export``, ``gateway tail``) as real
subprocesses against a real gateway that requires auth, and the synchronous facade
(:mod:`gateway.client.sync`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from gateway.cli_client import EXIT_REFUSED, EXIT_RESET, EXIT_UNREACHABLE, EXIT_USAGE, scrub
from gateway.client import Cursor, Refused, connect
from gateway.client import sync as sync_client
from tests.helpers.daemon import Daemon, Tail, free_port, run_cli, write_toml
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.keys import BYPASS, SECRET
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import new_store_id

TOKEN_ENV = {"SERVER_BYPASS_TOKEN": BYPASS}


@pytest.fixture(name="secured")
async def _secured(make_gateway: MakeGateway) -> GatewayHarness:
    """A production-mode gateway: only a JWT or the bypass token gets in."""
    return await make_gateway(require_auth=True, jwt_secret=SECRET, bypass_token=BYPASS)


def url_of(gateway: GatewayHarness) -> str:
    return f"ws://{gateway.base}"


async def gw(gateway: GatewayHarness, *args: str, **kwargs: Any) -> tuple[int, str, str]:
    """``gateway ARGS --url URL`` with the bypass token in the environment (unless ``env``)."""
    kwargs.setdefault("env", TOKEN_ENV)
    return await run_cli(*args, "--url", url_of(gateway), **kwargs)


async def export(gateway: GatewayHarness, store: str, *args: str) -> list[dict[str, Any]]:
    rc, out, err = await gw(gateway, "store", "export", store, *args)
    assert rc == 0, err
    assert err == ""
    return [json.loads(line) for line in out.splitlines()]


def jsonl(*events: tuple[str, Any]) -> bytes:
    return b"".join(json.dumps({"name": n, "args": a}).encode() + b"\n" for n, a in events)


class TestPushAndExport:
    async def test_push_then_export_round_trips_every_field(self, secured: GatewayHarness) -> None:
        """Pushed events come back from the export as JSON lines with LiveStore's fields,
        createdAt and the log's backendId; push prints the final seqNums."""
        store = new_store_id("cli")
        args = {"id": "t1", "text": "héllo", "tags": [1, None, True]}
        rc, out, err = await gw(
            secured,
            *("push", "--store", store, "--name", "todoCreated-v1"),
            *("--args", json.dumps(args), "--client-id", "ops-script"),
        )
        assert (rc, out, err) == (0, "1\n", "")
        stdin = jsonl(("todoCompleted-v1", {"id": "t1"}), ("todoDeleted-v1", {}))
        rc, out, err = await gw(secured, "push", "--store", store, "--stdin", stdin=stdin)
        assert (rc, out, err) == (0, "2\n3\n", "")

        lines = await export(secured, store)
        assert [(e["name"], e["seqNum"], e["parentSeqNum"]) for e in lines] == [
            ("todoCreated-v1", 1, 0),
            ("todoCompleted-v1", 2, 1),
            ("todoDeleted-v1", 3, 2),
        ]
        assert lines[0]["args"] == args
        assert lines[0]["clientId"] == "ops-script"
        assert lines[1]["clientId"] == lines[2]["clientId"] != "ops-script"
        assert all(e["sessionId"] and e["createdAt"].endswith("Z") for e in lines)
        assert len({e["backendId"] for e in lines}) == 1
        assert list(lines[0]) == [
            *("name", "args", "seqNum", "parentSeqNum", "clientId", "sessionId"),
            *("createdAt", "backendId", "writer"),
        ]
        # The export runs as a service (bypass token): each line says who pushed the event.
        assert {json.dumps(e["writer"], sort_keys=True) for e in lines} == {
            json.dumps(
                {
                    "instanceId": "gateway-push",
                    "reason": "bypass",
                    "receivedAt": e["createdAt"],
                    "subject": "server",
                },
                sort_keys=True,
            )
            for e in lines
        }

        # The same log as a library client reads it.
        async with connect(url_of(secured), store, bypass_token=BYPASS) as client:
            read = [e async for b in client.events(live=False) for e in b.events]
        assert [(e.seq_num, e.client_id, e.created_at) for e in read] == [
            (e["seqNum"], e["clientId"], e["createdAt"]) for e in lines
        ]

    async def test_export_resumes_after_a_seqnum_or_a_cursor(self, secured: GatewayHarness) -> None:
        """``--from N`` gives the events after N; ``--from N:BACKENDID`` also checks the log is
        the same one, and a foreign backendId fails with its own exit status."""
        store = new_store_id("from")
        stdin = jsonl(*((f"e{i}", {"i": i}) for i in range(1, 251)))
        rc, out, err = await gw(secured, "push", "--store", store, "--stdin", stdin=stdin)
        assert rc == 0, err
        assert out.split() == [str(i) for i in range(1, 251)]

        whole = await export(secured, store)
        assert [e["seqNum"] for e in whole] == list(range(1, 251))
        assert [e["parentSeqNum"] for e in whole] == list(range(250))
        assert [e["seqNum"] for e in await export(secured, store, "--from", "240")] == list(
            range(241, 251)
        )
        backend = whole[0]["backendId"]
        rest = await export(secured, store, "--from", f"249:{backend}")
        assert [e["seqNum"] for e in rest] == [250]
        assert await export(secured, store, "--from", "250") == []

        rc, out, err = await gw(secured, "store", "export", store, "--from", "3:elsewhere")
        assert rc == EXIT_RESET
        assert out == ""
        assert backend in err
        assert "elsewhere" in err

    async def test_export_of_a_new_store_is_empty(self, secured: GatewayHarness) -> None:
        assert await export(secured, new_store_id("empty")) == []
        assert await export(secured, new_store_id("empty"), "--from", "5") == []

    async def test_push_with_stdin_rebases_on_another_writer(self, secured: GatewayHarness) -> None:
        """Events pushed while another writer appended get the next seqNums."""
        store = new_store_id("rebase")
        async with connect(url_of(secured), store, bypass_token=BYPASS) as other:
            assert await other.commit_many([("a", 1), ("b", 2)]) == [1, 2]
            rc, out, err = await gw(secured, "push", "--store", store, "--name", "c", "--args", "3")
            assert (rc, out) == (0, "3\n"), err
            # `other` still believes the head is 2: it rebases on top of the CLI's event.
            assert await other.commit("d", 4) == 4
        assert [e["name"] for e in await export(secured, store)] == ["a", "b", "c", "d"]


class TestFailures:
    def test_messages_are_scrubbed_of_the_token_in_every_encoding(self) -> None:
        """The token travels percent-encoded twice in the sync URL's payload: an error that
        quotes the URL must not leak it in any of its forms."""
        token = "t+k/n=~" + BYPASS
        once = quote(token, safe="")
        text = f"raw {token} once {once} twice {quote(once, safe='')} form {quote_plus(once)}"
        scrubbed = scrub(text, token)
        assert scrubbed == "raw <redacted> once <redacted> twice <redacted> form <redacted>"
        assert scrub(text, None) == text

    @pytest.mark.parametrize(
        "command",
        [
            ("push", "--store", "s", "--name", "n", "--args", "{}"),
            ("store", "export", "s"),
            ("tail", "--store", "s"),
        ],
    )
    async def test_a_wrong_token_is_refused_without_showing_it(
        self, secured: GatewayHarness, command: tuple[str, ...]
    ) -> None:
        """A refused credential: exit status 4, one line naming the server's code, and the
        token nowhere in the output (it travels in the URL the client builds)."""
        wrong = "wrong-" + BYPASS
        rc, out, err = await gw(secured, *command, env={"SERVER_BYPASS_TOKEN": wrong})
        assert rc == EXIT_REFUSED
        assert out == ""
        assert err.startswith("gateway: "), err
        assert err.count("\n") == 1, err
        assert "refused with HTTP 40" in err
        assert BYPASS not in err  # nor, then, the wrong token that contains it

    async def test_no_token_is_refused(self, secured: GatewayHarness) -> None:
        rc, _, err = await gw(secured, "store", "export", "s", env={})
        assert rc == EXIT_REFUSED
        assert "refused with HTTP 401" in err

    async def test_an_unreachable_server_fails_after_the_timeout(self) -> None:
        url = f"ws://127.0.0.1:{free_port()}"
        rc, out, err = await run_cli(
            *("push", "--store", "s", "--name", "n", "--args", "1"),
            *("--url", url, "--timeout", str(TIMEOUT_UNIT)),
            env=TOKEN_ENV,
        )
        assert (rc, out) == (EXIT_UNREACHABLE, "")
        assert err == f"gateway: cannot connect to {url} within {TIMEOUT_UNIT:g}s\n"

    @pytest.mark.parametrize(
        ("args", "stdin", "message"),
        [
            (("--stdin", "--name", "n"), b"", "--stdin excludes --name and --args"),
            (("--name", "n"), None, "give --name and --args, or --stdin"),
            (("--name", "n", "--args", "{nope"), None, "--args: not JSON"),
            (("--stdin",), b'{"name":"a","args":1}\n{"args":2}\n', "stdin line 2: expected"),
            (("--stdin",), b'{"name":"a","args":1}\n\n[1\n', "stdin line 3: not JSON"),
            (("--url", "ftp://host", "--name", "n", "--args", "1"), None, "--url: expected"),
        ],
    )
    async def test_bad_input_is_a_usage_error_and_pushes_nothing(
        self, secured: GatewayHarness, args: tuple[str, ...], stdin: bytes | None, message: str
    ) -> None:
        store = new_store_id("bad")
        rc, out, err = await run_cli(
            "push", "--store", store, "--url", url_of(secured), *args, env=TOKEN_ENV, stdin=stdin
        )
        assert (rc, out) == (EXIT_USAGE, "")
        assert message in err
        assert await export(secured, store) == []


async def test_the_url_and_token_come_from_the_configuration(
    secured: GatewayHarness, tmp_path: Path
) -> None:
    """Without ``--url`` the commands reach the configured listener; the token comes from
    ``auth.bypass_token_file`` and is never printed."""
    (tmp_path / "bypass").write_text(BYPASS + "\n")
    config = write_toml(
        tmp_path / "gateway.toml",
        {
            "server": {"host": "0.0.0.0", "port": secured.port},
            "auth": {"bypass_token_file": str(tmp_path / "bypass")},
        },
    )
    store = new_store_id("conf")
    rc, out, err = await run_cli(
        "push", "--config", str(config), "--store", store, "--name", "n", "--args", "1"
    )
    assert (rc, out, err) == (0, "1\n", "")
    rc, out, err = await run_cli("store", "export", store, "--config", str(config))
    assert rc == 0, err
    assert json.loads(out)["name"] == "n"


@pytest.fixture(name="tails")
async def _tails() -> AsyncIterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        await tail.kill()


async def test_tail_follows_what_push_commits(secured: GatewayHarness, tails: list[Tail]) -> None:
    """``gateway tail`` prints the backlog after ``--from``, then each event ``gateway push``
    commits, in the export's line format."""
    store = new_store_id("tail")
    stdin = jsonl(("a", 1), ("b", 2))
    assert (await gw(secured, "push", "--store", store, "--stdin", stdin=stdin))[0] == 0
    tail = await Tail.start(
        "--store", store, "--from", "1", "--url", url_of(secured), env=TOKEN_ENV
    )
    tails.append(tail)
    assert (await tail.event())["name"] == "b"  # the backlog: the live pull is registered
    rc, out, err = await gw(secured, "push", "--store", store, "--name", "c", "--args", "3")
    assert (rc, out) == (0, "3\n"), err
    live = await tail.event()
    assert (live["name"], live["args"], live["seqNum"], live["parentSeqNum"]) == ("c", 3, 3, 2)
    assert live == (await export(secured, store, "--from", "2"))[0]
    assert await tail.interrupt() == 0


async def test_tail_continues_across_a_server_restart(
    daemons: list[Daemon], tails: list[Tail], tmp_path: Path
) -> None:
    """``gateway tail`` outlives a restart of the server: it reconnects (with backoff) and
    continues after the last event it printed, with no gap and no duplicate."""
    serve = ("--port", str(free_port()), "--data-dir", str(tmp_path))
    daemons.append(await Daemon.start(*serve))
    url = f"ws://127.0.0.1:{daemons[0].port}"
    rc, _, err = await run_cli(
        "push", "--url", url, "--store", "s", "--stdin", stdin=jsonl(("a", 1))
    )
    assert rc == 0, err
    tail = await Tail.start("--store", "s", "--url", url, env={})
    tails.append(tail)
    assert (await tail.event())["seqNum"] == 1

    assert await daemons[0].terminate() == 0
    daemons.append(await Daemon.start(*serve))
    rc, _, err = await run_cli("push", "--url", url, "--store", "s", "--name", "b", "--args", "2")
    assert rc == 0, err
    after = await tail.event(within=20 * TIMEOUT_UNIT)
    assert (after["name"], after["seqNum"]) == ("b", 2)
    assert await tail.interrupt() == 0


class TestSyncFacade:
    async def test_commit_read_resume_and_follow_from_blocking_code(
        self, secured: GatewayHarness
    ) -> None:
        """From a plain thread (the gateway's loop keeps running): commits return seqNums,
        ``live=False`` stops at the head, a cursor resumes, ``live=True`` waits for new events
        (``timeout`` bounds the wait) and leaving its loop ends the pull."""
        store = new_store_id("sync")
        url = url_of(secured)
        unit = TIMEOUT_UNIT

        def first(client: sync_client.SyncStore) -> dict[str, Any]:
            seqs = [client.commit("a", {"n": 1}), *client.commit_many([("b", 2), ("c", 3)])]
            batches = list(client.events(live=False))
            head = batches[-1].cursor
            resumed = list(client.events(after=Cursor(head.backend_id, 1), live=False))
            client.timeout = unit  # nothing new: the live wait times out
            try:
                next(iter(client.events(after=head, live=True)))
                idle = "no timeout"
            except TimeoutError:
                idle = "timed out"
            client.timeout = 10 * unit
            return {
                "seqs": seqs,
                "read": [e.seq_num for b in batches for e in b.events],
                "resumed": [e.seq_num for b in resumed for e in b.events],
                "idle": idle,
                "head": head,
                "again": client.commit("d", 4),
            }

        def follow(after: Cursor) -> list[int]:
            with sync_client.connect(url, store, bypass_token=BYPASS, timeout=10 * unit) as c:
                for batch in c.events(after=after, live=True):
                    return [e.seq_num for e in batch.events]
            return []  # pragma: no cover - a live stream does not end

        def script() -> dict[str, Any]:
            with sync_client.connect(url, store, bypass_token=BYPASS, timeout=10 * unit) as c:
                return first(c)

        result = await asyncio.to_thread(script)
        assert result["seqs"] == [1, 2, 3]
        assert result["read"] == [1, 2, 3]
        assert result["resumed"] == [2, 3]
        assert result["idle"] == "timed out"
        assert result["again"] == 4
        assert await asyncio.to_thread(follow, result["head"]) == [4]

    async def test_errors_surface_as_the_async_client_raises_them(
        self, secured: GatewayHarness
    ) -> None:
        def script() -> None:
            with sync_client.connect(url_of(secured), "s", bypass_token="wrong-" + BYPASS):
                pass  # pragma: no cover - refused on entering

        with pytest.raises(Refused) as refused:
            await asyncio.to_thread(script)
        assert refused.value.status in (401, 403)
