"""Issue 14, push rules, with the real LiveStore 0.4.0 client (``client.mjs``) on both transports.

A read-only app (its JWT's ``scope`` claim is ``read``; ``[rules] read_only_claim = "scope"``)
commits locally: every push of its events is refused with ``UnknownError`` (note
``READ_ONLY: …``), its commits stay pending and never reach a second app, while the second
(editor) app's commits flow to both. What the 0.4.0 client does with the refusal is observed
here and documented in the README ("Push rules"): it keeps its sync running (the store does not
shut down, even with ``onSyncError: 'shutdown'``), stays connected, keeps pulling, and retries
the refused push with a backoff, forever.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.interop.test_interop import (
    JWT_SECRET,
    ClientFactory,
    GatewayProcess,
    _client_pool,
    _interop_prerequisites,  # noqa: F401 - the autouse skip/fail on missing node packages
    _running_gateway,
    _store_id,  # noqa: F401 - the store_id fixture
    auth_env,
    event_ids,
    ids,
    row_ids,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


def payload(instance_id: str, subject: str, scope: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": subject, "scope": scope, "iat": now - 5, "exp": now + 3600}
    return {"instanceId": instance_id, "authToken": jwt.encode(claims, JWT_SECRET, "HS256")}


@pytest.fixture(name="rules_gateway")
async def _rules_gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    env = auth_env() | {"GATEWAY_RULES_READ_ONLY_CLAIM": "scope"}
    async with _running_gateway(tmp_path / "gateway-data", env) as gateway:
        yield gateway


@pytest.fixture(name="rules_clients")
async def _rules_clients(rules_gateway: GatewayProcess) -> AsyncIterator[ClientFactory]:
    async with _client_pool(rules_gateway) as factory:
        yield factory


def refused_line(store_id: str, instance_id: str) -> str:
    return (
        rf"gateway\.security: push refused code=READ_ONLY store={store_id} subject=\S+ "
        rf"instance={instance_id} reason=jwt"
    )


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_a_read_only_app_stays_pending_while_the_editor_app_syncs(
    rules_gateway: GatewayProcess, rules_clients: ClientFactory, store_id: str, transport: str
) -> None:
    gw = rules_gateway
    extra: dict[str, Any] = {"transport": transport}
    if transport == "http":
        extra["extra_args"] = ("--poll-interval", "200")
    editor = await rules_clients(
        "client-editor",
        store_id=store_id,
        sync_payload=payload("app-editor", "ed", "write"),
        **extra,
    )
    viewer = await rules_clients(
        "client-viewer",
        store_id=store_id,
        sync_payload=payload("app-viewer", "vera", "read"),
        **extra,
    )
    await editor.commit("E", 2)
    await editor.wait_rows(2, within=15)

    # The viewer commits: its push is refused, again and again (the client retries it).
    await viewer.commit("V", 2)
    await viewer.cmd("waitpending", count=2, timeout=10)
    await gw.wait_log(refused_line(store_id, "app-viewer"), count=3, within=30)

    # Meanwhile it still pulls: the editor's events reach it, and a later one too.
    await viewer.cmd("waitupstream", head=2, rows=4, timeout=15)
    await editor.commit("E", 1, start=3)
    await editor.wait_rows(3, within=15)
    # Its session shows the rows once the leader has rebased its pending events on them.
    await viewer.cmd("waitupstream", head=3, rows=5, timeout=15)

    dump_viewer, dump_editor = await viewer.dump(), await editor.dump()
    # The editor never saw the viewer's events; the viewer has them only locally, pending.
    assert event_ids(dump_editor) == ids("E", 1, 3)
    assert sorted(row_ids(dump_editor)) == ids("E", 1, 3)
    assert event_ids(dump_viewer) == ids("E", 1, 3)
    assert sorted(row_ids(dump_viewer)) == sorted(ids("E", 1, 3) + ids("V", 1, 2))
    assert dump_viewer["sync"]["pending"] == 2, dump_viewer["sync"]
    assert dump_viewer["sync"]["upstreamHead"] == 3, dump_viewer["sync"]
    counters = dump_viewer["counters"]
    print(f"viewer ({transport}) after its refusals: {dump_viewer['sync']} {counters}")
    if transport == "ws":
        # Still connected on its first socket: a refused push closes nothing.
        assert dump_viewer["network"]["isConnected"] is True, dump_viewer["network"]
        assert counters["wsOpened"] == 1, counters
        assert counters["unknownErrors"] >= 3, counters
        assert counters["pushesSent"] >= 3, counters
    else:
        assert counters["httpPushes"] >= 3, counters
    assert gw.log_lines(r"push refused code=READ_ONLY .*instance=app-editor") == []

    # A third app, booting now, gets exactly the editor's events from the server's log.
    verifier = await rules_clients(
        "client-verify",
        store_id=store_id,
        blocking_initial_sync=True,
        sync_payload=payload("app-verify", "carol", "write"),
    )
    dump_verifier = await verifier.dump()
    assert event_ids(dump_verifier) == ids("E", 1, 3)
