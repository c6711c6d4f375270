"""Issue 14, push rules, on a real gateway on 127.0.0.1:0 with JWT auth, over both transports.

A read-only credential pulls but never pushes; a rule on an event-name glob allows one event
and refuses another in the same store (a batch mixing them is refused whole); a bypass session
can be restricted; a reload changes the rules for sessions already open; a refused push
stores nothing and does not hold up the next pusher. Refusals are ``UnknownError`` whose
``note`` starts with READ_ONLY or PUSH_FORBIDDEN, a ``gateway.security`` line and a count in
``gateway_pushes_rejected_total``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.configfile import build_config
from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, ws_url
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import http_push, http_rpc
from tests.helpers.keys import AUDIENCE, BYPASS, SECRET
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import (
    HTTP_PULL,
    NONE,
    assert_fail,
    assert_push_ok,
    events_of,
    make_events,
    new_store_id,
    seqs_of,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)

TODOS_ONLY: tuple[dict[str, Any], ...] = (
    {"stores": ["team-*"], "events": ["v1.Todo*"], "action": "allow"},
    {"stores": ["team-*"], "action": "deny", "name": "team stores take todos only"},
)


def token(sub: str, **claims: Any) -> str:
    body = {"sub": sub, "aud": AUDIENCE, "iat": int(time.time()) - 5, "exp": time.time() + 3600}
    return jwt.encode(body | claims, SECRET, algorithm="HS256")


def jwt_payload(sub: str, **claims: Any) -> dict[str, str]:
    return {"instanceId": f"app-{sub}", "authToken": token(sub, **claims)}


def bypass_payload() -> dict[str, str]:
    return {"instanceId": "svc-1", "serverBypass": BYPASS}


def auth_config(**more: Any) -> dict[str, Any]:
    return {
        "require_auth": True,
        "jwt_secret": SECRET,
        "bypass_token": BYPASS,
        "audience": AUDIENCE,
        "read_only_claim": "scope",
    } | more


Opener = Callable[[GatewayHarness, str, dict[str, str]], Awaitable[RpcClient]]


@pytest.fixture(name="ws")
async def _ws() -> AsyncIterator[Opener]:
    opened: list[RpcClient] = []

    async def open_(gw: GatewayHarness, store: str, payload: dict[str, str]) -> RpcClient:
        client = await RpcClient.open(gw.ws_url(store, payload=payload), store)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.close()


def refusal_note(frame: dict[str, Any], code: str) -> str:
    error = assert_fail(frame, "UnknownError")
    note = error["note"]
    assert isinstance(note, str)
    assert note.startswith(f"{code}: "), note
    assert error["cause"]["message"] in note, error
    return note


async def stored(gw: GatewayHarness, store: str) -> list[dict[str, Any]]:
    """Every event of ``store``, read by a pull of the bypass service."""
    reader = await RpcClient.open(gw.ws_url(store, payload=bypass_payload()), store)
    try:
        return events_of(await reader.pull())
    finally:
        await reader.close()


def security_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.security"]


async def test_a_viewer_pulls_but_never_pushes_over_websocket(
    make_gateway: MakeGateway, ws: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    """A JWT with scope=read is refused every push (READ_ONLY), keeps its live pull (it gets
    the editor's events, before and after its refusal), and its refused events are never
    stored: the editor's next push at the same parent is accepted."""
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(**auth_config())
    store = new_store_id()
    viewer_token = token("vera", scope="read")
    viewer = await ws(gw, store, {"instanceId": "app-vera", "authToken": viewer_token})
    editor = await ws(gw, store, jwt_payload("ed", scope=["write", "profile"]))
    rid, _ = await viewer.live_pull()

    refused = await viewer.push(make_events(1, 2, client_id="vera"))
    note = refusal_note(refused, "READ_ONLY")
    assert "'scope'" in note

    await editor.push_ok(make_events(1, 2, client_id="ed"))
    assert [e["seqNum"] for e in await viewer.live_events(rid, 2)] == [1, 2]
    refusal_note(await viewer.push(make_events(3, 1, client_id="vera")), "READ_ONLY")
    await editor.push_ok(make_events(3, 1, client_id="ed"))
    assert [e["seqNum"] for e in await viewer.live_events(rid, 3)] == [3]

    events = await stored(gw, store)
    assert [e["clientId"] for e in events] == ["ed"] * 3
    assert seqs_of(await viewer.pull()) == [1, 2, 3]
    metrics = await scrape(gw)
    assert metrics.value("gateway_pushes_rejected_total", reason="read_only") == 2
    assert metrics.value("gateway_pushes_rejected_total", reason="forbidden") == 0
    lines = security_lines(caplog)
    assert len([line for line in lines if "push refused code=READ_ONLY" in line]) == 2, lines
    assert f"store={store} subject=vera instance=app-vera reason=jwt" in lines[0], lines
    assert not [line for line in lines if viewer_token in line or SECRET in line]


async def test_a_viewer_pulls_but_never_pushes_over_http(make_gateway: MakeGateway) -> None:
    """The same over the HTTP transport: the push is answered READ_ONLY, the pull works."""
    gw = await make_gateway(**auth_config())
    store = new_store_id()
    viewer_url = gw.http_url(store, payload=jwt_payload("vera", scope=["read"]))
    editor_url = gw.http_url(store, payload=jwt_payload("ed", scope="write"))

    refusal_note(await http_push(viewer_url, store, make_events(1, 1)), "READ_ONLY")
    assert_push_ok(await http_push(editor_url, store, make_events(1, 2, client_id="ed")))
    pulled = await http_rpc(viewer_url, HTTP_PULL, {"storeId": store, "cursor": NONE})
    *chunks, _ = pulled.body
    assert seqs_of([item for chunk in chunks for item in chunk["values"]]) == [1, 2]
    metrics = await scrape(gw)
    assert metrics.value("gateway_pushes_rejected_total", reason="read_only") == 1


async def test_an_event_glob_allows_one_event_and_refuses_another(
    make_gateway: MakeGateway, ws: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    """In a team store only v1.Todo* events are allowed: v1.TodoCreated is stored,
    v1.UserDeleted is refused (PUSH_FORBIDDEN naming the event and the rule), and a batch
    mixing both is refused whole over either transport; other stores take anything."""
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(**auth_config(), push=TODOS_ONLY)
    store = new_store_id("team")
    payload = jwt_payload("ed", scope="write")
    client = await ws(gw, store, payload)

    await client.push_ok(make_events(1, 1, name="v1.TodoCreated"))
    note = refusal_note(
        await client.push(make_events(2, 1, name="v1.UserDeleted")), "PUSH_FORBIDDEN"
    )
    assert "'v1.UserDeleted' (batch[0])" in note
    assert "rules.push[1] (team stores take todos only)" in note

    mixed = make_events(2, 2, name="v1.TodoCompleted") + make_events(4, 1, name="v1.UserDeleted")
    note = refusal_note(await client.push(mixed), "PUSH_FORBIDDEN")
    assert "'v1.UserDeleted' (batch[2])" in note
    http_answer = await http_push(gw.http_url(store, payload=payload), store, mixed)
    refusal_note(http_answer, "PUSH_FORBIDDEN")
    assert [e["name"] for e in await stored(gw, store)] == ["v1.TodoCreated"]

    # Nothing of the refused batches moved the head: the todos alone go in at seq 2.
    await client.push_ok(mixed[:2])
    assert seqs_of(await client.pull()) == [1, 2, 3]
    other = new_store_id("solo")
    solo = await ws(gw, other, payload)
    await solo.push_ok(make_events(1, 1, name="v1.UserDeleted"))

    metrics = await scrape(gw)
    assert metrics.value("gateway_pushes_rejected_total", reason="forbidden") == 3
    lines = [line for line in security_lines(caplog) if "PUSH_FORBIDDEN" in line]
    assert len(lines) == 3, lines
    assert "subject=ed instance=app-ed reason=jwt event=v1.UserDeleted rule=1 events=3" in lines[1]


async def test_a_rule_restricts_bypass_sessions_when_it_names_them(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """sessions = ["bypass"]: the internal service may not push v1.UserDeleted, a JWT client
    may; a rule that does not name bypass sessions leaves the service alone."""
    rules = (
        {"events": ["v1.UserDeleted"], "sessions": ["bypass"], "action": "deny"},
        {"events": ["v1.Audit*"], "action": "deny"},
    )
    gw = await make_gateway(**auth_config(), push=rules)
    store = new_store_id()
    service = await ws(gw, store, bypass_payload())
    app = await ws(gw, store, jwt_payload("ed"))

    note = refusal_note(
        await service.push(make_events(1, 1, name="v1.UserDeleted")), "PUSH_FORBIDDEN"
    )
    assert "rules.push[0]" in note
    await service.push_ok(make_events(1, 1, name="v1.AuditLogged"))
    refusal_note(await app.push(make_events(2, 1, name="v1.AuditLogged")), "PUSH_FORBIDDEN")
    await app.push_ok(make_events(2, 1, name="v1.UserDeleted"))
    assert [e["name"] for e in await stored(gw, store)] == ["v1.AuditLogged", "v1.UserDeleted"]


async def test_a_reload_changes_the_rules_for_open_sessions(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """Sessions opened with no rules in force: after a reload that denies role=viewer (a claim
    no rule read when they opened), the viewer's open session is refused and the editor's is
    not; after a reload back to no rules the viewer pushes again, on the same connection."""
    gw = await make_gateway(**auth_config())
    store = new_store_id()
    viewer = await ws(gw, store, jwt_payload("vera", role="viewer"))
    editor = await ws(gw, store, jwt_payload("ed", role=["staff", "editor"]))
    await viewer.push_ok(make_events(1, 1))

    config = gw.gw.config
    deny_viewers = build_config(
        {"rules": {"push": [{"claims": {"role": ["viewer"]}, "action": "deny"}]}}, {}
    ).rules
    await gw.gw.reload(dataclasses.replace(config, rules=deny_viewers))
    refusal_note(await viewer.push(make_events(2, 1)), "PUSH_FORBIDDEN")
    await editor.push_ok(make_events(2, 1))

    await gw.gw.reload(config)
    await viewer.push_ok(make_events(3, 1))
    assert seqs_of(await editor.pull()) == [1, 2, 3]


async def test_a_refused_push_does_not_hold_up_the_next_pusher(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """A viewer pushing over and over (a LiveStore client retries a refused push) while the
    editor pushes: every editor push is accepted in turn and no viewer event is stored."""
    gw = await make_gateway(**auth_config(push_rate=1000.0, push_burst=1000))
    store = new_store_id()
    viewer = await ws(gw, store, jwt_payload("vera", scope="read"))
    editor = await ws(gw, store, jwt_payload("ed"))
    backend_id = await editor.backend_id()
    for seq in range(1, 11):
        refused_rid = await viewer.send_push(make_events(seq, 1, client_id="vera"), backend_id)
        accepted_rid = await editor.send_push(make_events(seq, 1, client_id="ed"), backend_id)
        refusal_note(await viewer.wait_exit(refused_rid), "READ_ONLY")
        assert_push_ok(await editor.wait_exit(accepted_rid))
    events = await stored(gw, store)
    assert [(e["seqNum"], e["clientId"]) for e in events] == [(s, "ed") for s in range(1, 11)]


async def test_sighup_reloads_the_rules_and_an_invalid_file_keeps_them(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The real daemon: rules read from the file; SIGHUP with a broken rule is refused (the
    error names the key) and the old rules stay in force for the open session; SIGHUP with
    the rule removed lets the same session push the event."""
    config = tmp_path / "gateway.toml"
    head = f'[server]\nport = 0\n[store]\ndata_dir = "{tmp_path / "data"}"\n'
    deny = '[[rules.push]]\nevents = ["admin.*"]\naction = "{action}"\n'
    config.write_text(head + deny.format(action="deny"))
    daemon = await Daemon.start("--config", str(config))
    daemons.append(daemon)
    store = new_store_id()
    client = await RpcClient.open(ws_url(daemon.port, store), store)
    try:
        refusal_note(await client.push(make_events(1, 1, name="admin.reset")), "PUSH_FORBIDDEN")
        await daemon.wait_line(r"gateway\.security: push refused code=PUSH_FORBIDDEN .*rule=0")

        config.write_text(head + deny.format(action="permit"))
        line = await daemon.reload()
        assert "reload refused" in line, line
        assert "rules.push[0].action: one of allow, deny; got 'permit'" in line, line
        refusal_note(await client.push(make_events(1, 1, name="admin.reset")), "PUSH_FORBIDDEN")

        config.write_text(head)
        assert "configuration reloaded" in await daemon.reload()
        await client.push_ok(make_events(1, 1, name="admin.reset"))
    finally:
        await client.close()
    assert await daemon.terminate() == 0
