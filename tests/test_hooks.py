"""Issue 14, Python hooks (``[hooks] on_push`` / ``on_pull``), on a real gateway on 127.0.0.1:0.

The hook functions are in tests/hooks_fixture.py. A hook gets the store, subject, claims,
instanceId (and the events: name, args, seqNum); None allows, a string refuses
(``HOOK_REFUSED: <reason>`` for a push, ``PULL_FORBIDDEN: <reason>`` for a pull). Sync hooks
run on a thread, async ones on the loop; an exception, a timeout or a bad return value
refuses (fail closed) and is logged with its traceback; a hook hanging for one store does not
stall another; a reload re-imports the hook's module and a broken one keeps the old hook.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.hookcall import PER_STORE
from tests import hooks_fixture
from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, run_cli, ws_url
from tests.helpers.harness import MakeGateway
from tests.helpers.http_client import http_push, http_rpc
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    HTTP_PULL,
    NONE,
    assert_fail,
    make_events,
    new_store_id,
    seqs_of,
)
from tests.test_push_rules import (
    Opener,
    _ws,  # noqa: F401 - the ws fixture: an RpcClient opener, closed after the test
    auth_config,
    jwt_payload,
    refusal_note,
    security_lines,
    stored,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)
HOOKS = "tests.hooks_fixture"


@pytest.fixture(autouse=True)
def _fresh_fixture() -> Iterator[None]:
    hooks_fixture.CALLS.clear()
    hooks_fixture.RELEASE.clear()
    yield
    hooks_fixture.RELEASE.set()  # frees any thread still waiting


def security_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.security"]


async def test_a_sync_hook_allows_and_refuses_with_what_the_rules_get(
    make_gateway: MakeGateway, ws: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    """The hook sees the store, subject, all the token's claims, the instanceId and each
    event's name, args and seqNum, on a hook thread; its reason refuses the batch over either
    transport (HOOK_REFUSED), counted and logged; nothing refused is stored."""
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(**auth_config(), on_push=f"{HOOKS}:refuse_deletes")
    store = new_store_id()
    ed = await ws(gw, store, jwt_payload("ed", role="editor", team="blue"))
    await ed.push_ok(make_events(1, 1, name="v1.TodoCreated"))
    (call,) = hooks_fixture.CALLS
    assert call["store_id"] == store
    assert call["subject"] == "ed"
    assert call["instance_id"] == "app-ed"
    assert call["claims"]["role"] == "editor"
    assert call["claims"]["team"] == "blue"
    assert call["claims"]["sub"] == "ed"
    assert call["events"] == [
        {"name": "v1.TodoCreated", "args": {"id": "client-test-1", "n": 1}, "seqNum": 1}
    ]
    assert call["thread"].startswith("gateway-hook-"), call

    batch = make_events(2, 1, name="v1.TodoCreated") + make_events(3, 1, name="v1.TodoDeleted")
    note = refusal_note(await ed.push(batch), "HOOK_REFUSED")
    assert note == "HOOK_REFUSED: only admins delete (event seqNum 3)"
    refusal_note(
        await http_push(gw.http_url(store, payload=jwt_payload("ed")), store, batch),
        "HOOK_REFUSED",
    )
    admin = await ws(gw, store, jwt_payload("ada", role="admin"))
    await admin.push_ok(batch)
    assert [e["name"] for e in await stored(gw, store)] == [
        "v1.TodoCreated",
        "v1.TodoCreated",
        "v1.TodoDeleted",
    ]
    metrics = await scrape(gw)
    assert metrics.value("gateway_pushes_rejected_total", reason="hook") == 2
    lines = [line for line in security_lines(caplog) if "code=HOOK_REFUSED" in line]
    assert len(lines) == 2, lines
    assert f"store={store} subject=ed instance=app-ed reason=jwt" in lines[0], lines


async def test_an_async_hook_runs_on_the_loop(make_gateway: MakeGateway, ws: Opener) -> None:
    gw = await make_gateway(**auth_config(), on_push=f"{HOOKS}:refuse_mallory")
    store = new_store_id()
    mallory = await ws(gw, store, jwt_payload("mallory"))
    bob = await ws(gw, store, jwt_payload("bob"))
    note = refusal_note(await mallory.push(make_events(1, 1)), "HOOK_REFUSED")
    assert note == "HOOK_REFUSED: mallory may not write"
    await bob.push_ok(make_events(1, 1))
    assert [c["thread"] for c in hooks_fixture.CALLS] == [threading.current_thread().name] * 2


@pytest.mark.parametrize(
    ("hook", "reason"),
    [
        ("raises", "the on_push hook failed (ValueError)"),
        ("returns_a_number", "the hook returned a int, not None or a reason"),
        # sys.exit() in a hook is a failure of the hook, never the server's exit.
        ("exits", "the on_push hook failed (RuntimeError)"),
        ("exits_async", "the on_push hook failed (SystemExit)"),
    ],
)
async def test_a_hook_that_fails_refuses_and_is_logged_with_its_traceback(
    make_gateway: MakeGateway,
    ws: Opener,
    caplog: pytest.LogCaptureFixture,
    hook: str,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(on_push=f"{HOOKS}:{hook}")
    store = new_store_id()
    client = await ws(gw, store, {"instanceId": "app-1"})
    note = refusal_note(await client.push(make_events(1, 1)), "HOOK_REFUSED")
    assert note == f"HOOK_REFUSED: {reason}"
    assert "hunter2" not in note
    assert seqs_of(await client.pull()) == []
    failures = [r for r in security_records(caplog) if r.levelno == logging.ERROR]
    assert len(failures) == 1, failures
    if hook == "raises":
        assert failures[0].exc_info is not None
        assert failures[0].exc_info[0] is ValueError
        assert f"hook on_push ({HOOKS}:raises) raised store={store}" in failures[0].getMessage()


@pytest.mark.parametrize("hook", ["sleep_sync", "sleep_async"])
async def test_a_hook_that_hangs_is_cut_off_by_the_timeout(
    make_gateway: MakeGateway, ws: Opener, caplog: pytest.LogCaptureFixture, hook: str
) -> None:
    """Past [hooks] timeout the push is refused (fail closed) and the timeout logged; the
    next push waits for its own hook call again, and a pull is not held up meanwhile."""
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(on_push=f"{HOOKS}:{hook}", timeout=0.3)
    store = new_store_id()
    client = await ws(gw, store, {"instanceId": "app-1"})
    rid = await client.send_push(make_events(1, 1))
    assert seqs_of(await client.pull()) == []
    note = refusal_note(await client.wait_exit(rid), "HOOK_REFUSED")
    assert note == "HOOK_REFUSED: the on_push hook did not answer within 0.3 s"
    refusal_note(await client.push(make_events(1, 1)), "HOOK_REFUSED")
    messages = [r.getMessage() for r in security_records(caplog) if r.levelno == logging.ERROR]
    assert len(messages) == 2, messages
    assert "timed out after 0.3 s" in messages[0], messages


async def test_a_slow_hook_on_one_store_does_not_stall_another(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """The hook blocks for slow-* stores until released. Six pushes to the slow store wait
    (at most PER_STORE of them hold a hook thread), while another store's pushes and pulls go
    on; once released, the slow store's pushes are answered (one wins the parent)."""
    gw = await make_gateway(on_push=f"{HOOKS}:wait_on_slow", timeout=20.0)
    slow, fast = new_store_id("slow"), new_store_id("fast")
    slow_clients = [await ws(gw, slow, {"instanceId": f"s{k}"}) for k in range(6)]
    rids = [
        await c.send_push(make_events(1, 1, client_id=f"s{k}")) for k, c in enumerate(slow_clients)
    ]
    for _ in range(PER_STORE):
        assert await asyncio.to_thread(hooks_fixture.WAITING.acquire, timeout=10 * TIMEOUT_UNIT)

    client = await ws(gw, fast, {"instanceId": "f"})
    for seq in range(1, 21):
        await client.push_ok(make_events(seq, 1))
    assert seqs_of(await client.pull()) == list(range(1, 21))
    for slow_client in slow_clients:
        assert not [f for f in await slow_client.barrier() if f.get("_tag") == "Exit"]
    assert not hooks_fixture.WAITING.acquire(blocking=False)  # the store's cap held

    hooks_fixture.RELEASE.set()
    exits = [await c.wait_exit(rid) for c, rid in zip(slow_clients, rids, strict=True)]
    accepted = [e for e in exits if e["exit"]["_tag"] == "Success"]
    assert len(accepted) == 1, exits
    for answer in exits:
        if answer is not accepted[0]:
            assert_fail(answer, "ServerAheadError")


async def test_on_pull_may_refuse_a_pull(
    make_gateway: MakeGateway, ws: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    """on_pull refuses non-admins the private-* stores: a pull (live or not, either transport)
    is answered UnknownError PULL_FORBIDDEN, counted and logged; an admin pulls; pushes are
    not the pull hook's business."""
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(**auth_config(), on_pull=f"{HOOKS}:private_pulls")
    store = new_store_id("private")
    vera = await ws(gw, store, jwt_payload("vera"))
    await vera.push_ok(make_events(1, 1))
    for live in (False, True):
        rid = await vera.send_pull(None, live=live)
        error = assert_fail(await vera.wait_exit(rid), "UnknownError")
        assert error["note"] == f"PULL_FORBIDDEN: vera may not read {store}", error
    pulled = await http_rpc(
        gw.http_url(store, payload=jwt_payload("vera")),
        HTTP_PULL,
        {"storeId": store, "cursor": NONE},
    )
    (answer,) = pulled.body
    assert assert_fail(answer, "UnknownError")["note"].startswith("PULL_FORBIDDEN: ")

    admin = await ws(gw, store, jwt_payload("ada", role="admin"))
    assert seqs_of(await admin.pull()) == [1]
    rid, _ = await admin.live_pull()
    await vera.push_ok(make_events(2, 1))
    assert [e["seqNum"] for e in await admin.live_events(rid, 2)] == [2]
    assert hooks_fixture.CALLS[-1]["claims"]["role"] == "admin"

    metrics = await scrape(gw)
    assert metrics.value("gateway_pulls_rejected_total", reason="hook") == 3
    lines = [line for line in security_lines(caplog) if "pull refused code=PULL_FORBIDDEN" in line]
    assert len(lines) == 3, lines


async def test_an_on_pull_hook_that_fails_refuses(make_gateway: MakeGateway, ws: Opener) -> None:
    gw = await make_gateway(on_pull=f"{HOOKS}:pull_raises")
    store = new_store_id()
    client = await ws(gw, store, {"instanceId": "app-1"})
    rid = await client.send_pull(None, live=False)
    error = assert_fail(await client.wait_exit(rid), "UnknownError")
    assert error["note"] == "PULL_FORBIDDEN: the on_pull hook failed (RuntimeError)"
    await client.push_ok(make_events(1, 1))


HOOK_V1 = 'def on_push(*args):\n    return "v1 says no"\n'
HOOK_V2 = 'def on_push(*args):\n    return "version two says no"\n'


async def test_a_reload_reimports_the_hook_and_a_broken_one_keeps_the_old(
    make_gateway: MakeGateway, ws: Opener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"hook_{new_store_id('mod').replace('-', '_')}"
    source = tmp_path / f"{module}.py"
    source.write_text(HOOK_V1)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    gw = await make_gateway(on_push=f"{module}:on_push")
    store = new_store_id()
    client = await ws(gw, store, {"instanceId": "app-1"})
    assert refusal_note(await client.push(make_events(1, 1)), "HOOK_REFUSED").endswith("v1 says no")

    config = gw.gw.config
    await asyncio.to_thread(source.write_text, HOOK_V2)
    await gw.gw.reload(config)
    note = refusal_note(await client.push(make_events(1, 1)), "HOOK_REFUSED")
    assert note.endswith("version two says no")

    await asyncio.to_thread(source.write_text, "def on_push(:\n")
    with pytest.raises(ConfigError, match=f"hooks.on_push: cannot import {module}: SyntaxError"):
        await gw.gw.reload(config)
    missing = dataclasses.replace(config.hooks, on_push=f"{module}:nowhere")
    await asyncio.to_thread(source.write_text, HOOK_V2)
    with pytest.raises(ConfigError, match=f"hooks.on_push: {module} has no function 'nowhere'"):
        await gw.gw.reload(dataclasses.replace(config, hooks=missing))
    note = refusal_note(await client.push(make_events(1, 1)), "HOOK_REFUSED")
    assert note.endswith("version two says no")

    await gw.gw.reload(
        dataclasses.replace(config, hooks=dataclasses.replace(config.hooks, on_push=""))
    )
    await client.push_ok(make_events(1, 1))


async def test_the_daemon_imports_a_hook_from_its_config(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\nport = 0\n[store]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[hooks]\non_push = "{HOOKS}:refuse_deletes"\ntimeout = "500ms"\n'
    )
    daemon = await Daemon.start("--config", str(config))
    daemons.append(daemon)
    store = new_store_id()
    client = await RpcClient.open(ws_url(daemon.port, store), store)
    try:
        await client.push_ok(make_events(1, 1, name="v1.TodoCreated"))
        note = refusal_note(
            await client.push(make_events(2, 1, name="v1.TodoDeleted")), "HOOK_REFUSED"
        )
        assert note == "HOOK_REFUSED: only admins delete (event seqNum 2)"
        await daemon.wait_line(r"gateway\.security: push refused code=HOOK_REFUSED ")
    finally:
        await client.close()


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_check_config_imports_the_hooks_and_reads_the_schemas(tmp_path: Path) -> None:
    """`gateway check-config` refuses what the start would: a hook module that cannot be
    imported, a function it lacks, a schema file that is not a JSON object of schemas."""
    config = tmp_path / "gateway.toml"
    write(config, f'[hooks]\non_push = "{HOOKS}:refuse_deletes"\n')
    rc, _, err = await run_cli("check-config", "--config", str(config))
    assert rc == 0, err
    write(config, f'[hooks]\non_pull = "{HOOKS}:nowhere"\n')
    rc, _, err = await run_cli("check-config", "--config", str(config))
    assert rc == 2
    assert f"hooks.on_pull: {HOOKS} has no function 'nowhere'" in err
    write(config, '[hooks]\non_push = "tests.no_such_module:f"\n')
    rc, _, err = await run_cli("check-config", "--config", str(config))
    assert rc == 2
    assert "hooks.on_push: cannot import tests.no_such_module: ModuleNotFoundError" in err
    schemas = tmp_path / "schemas.json"
    write(schemas, '["not", "an", "object"]')
    write(config, f'[rules]\nevent_schemas = "{schemas}"\n')
    rc, _, err = await run_cli("check-config", "--config", str(config))
    assert rc == 2
    assert "expected a JSON object of schemas" in err


async def test_a_reload_that_adds_a_hook_gives_it_the_claims_of_open_sessions(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """Sessions opened with neither rules nor hooks keep no claims; a reload that configures
    a hook renews them (the re-check), so the hook judges an open session by its token."""
    gw = await make_gateway(**auth_config(read_only_claim=""))
    store = new_store_id("private")
    admin = await ws(gw, store, jwt_payload("ada", role="admin"))
    vera = await ws(gw, store, jwt_payload("vera", role="viewer"))
    config = gw.gw.config
    hooked = dataclasses.replace(config.hooks, on_pull=f"{HOOKS}:private_pulls")
    await gw.gw.reload(dataclasses.replace(config, hooks=hooked))
    assert seqs_of(await admin.pull()) == []
    rid = await vera.send_pull(None, live=False)
    error = assert_fail(await vera.wait_exit(rid), "UnknownError")
    assert error["note"] == f"PULL_FORBIDDEN: vera may not read {store}"
    assert [c["claims"].get("role") for c in hooks_fixture.CALLS] == ["admin", "viewer"]
