"""Issue 14, event validation, with the real LiveStore 0.4.0 client (``client.mjs``).

The gateway's schema file is printed by ``event_schemas.mjs`` from the app's own Effect Schema
events (``app_events.mjs``, which client.mjs uses), then tightened the way an operator might
(``text`` at most 40 characters; strict mode on: the app's one event is the only name
allowed). One app commits todos with over-long texts: every push of them is refused
(``EVENT_INVALID``), they stay pending and never reach a second app, whose valid commits flow
to both; a third app, booting later, gets exactly the valid events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.interop.test_interop import (
    INTEROP_DIR,
    ClientFactory,
    GatewayProcess,
    _client_pool,
    _interop_prerequisites,  # noqa: F401 - the autouse skip/fail on missing node packages
    _running_gateway,
    _store_id,  # noqa: F401 - the store_id fixture
    event_ids,
    ids,
    row_ids,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


async def generated_schemas() -> dict[str, dict[str, object]]:
    """What ``node tests/interop/event_schemas.mjs`` prints."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(INTEROP_DIR / "event_schemas.mjs"),
        cwd=INTEROP_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    schemas: dict[str, dict[str, object]] = json.loads(out)
    return schemas


async def test_event_schemas_mjs_prints_the_apps_event_schemas() -> None:
    assert await generated_schemas() == {
        "v1.TodoCreated": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "required": ["id", "text"],
            "properties": {"id": {"type": "string"}, "text": {"type": "string"}},
            "additionalProperties": False,
        }
    }


@pytest.fixture(name="validating_gateway")
async def _validating_gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    schemas = await generated_schemas()
    properties = schemas["v1.TodoCreated"]["properties"]
    assert isinstance(properties, dict)
    properties["text"]["maxLength"] = 40
    path = tmp_path / "event-schemas.json"
    path.write_text(json.dumps(schemas))
    env = {"GATEWAY_RULES_EVENT_SCHEMAS": str(path), "GATEWAY_RULES_STRICT_EVENTS": "true"}
    async with _running_gateway(tmp_path / "gateway-data", env) as gateway:
        yield gateway


@pytest.fixture(name="validating_clients")
async def _validating_clients(validating_gateway: GatewayProcess) -> AsyncIterator[ClientFactory]:
    async with _client_pool(validating_gateway) as factory:
        yield factory


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_an_invalid_event_never_reaches_another_app(
    validating_gateway: GatewayProcess,
    validating_clients: ClientFactory,
    store_id: str,
    transport: str,
) -> None:
    gw = validating_gateway
    extra: dict[str, object] = {"transport": transport}
    if transport == "http":
        extra["extra_args"] = ("--poll-interval", "200")
    good = await validating_clients(
        "client-good", store_id=store_id, sync_payload={"instanceId": "app-good"}, **extra
    )
    bad = await validating_clients(
        "client-bad", store_id=store_id, sync_payload={"instanceId": "app-bad"}, **extra
    )
    await good.commit("G", 2)
    await good.wait_rows(2, within=15)

    # Texts over 40 characters: valid for the app's schema, not for the server's.
    reply = await bad.cmd(
        "commit", prefix="B", count=2, text="a todo whose text is far too long " * 2
    )
    assert reply["committed"] == 2
    await bad.cmd("waitpending", count=2, timeout=10)
    refused = (
        rf"gateway\.security: push refused code=EVENT_INVALID store={store_id} "
        r"subject=anonymous instance=app-bad .*event=v1\.TodoCreated"
    )
    lines = await gw.wait_log(refused, count=3, within=30)
    assert "(batch[0]): args/text: <value> is longer than 40 characters" in lines[0], lines[0]

    # The good app's events keep flowing, to both apps.
    await good.commit("G", 1, start=3)
    await good.wait_rows(3, within=15)
    await bad.cmd("waitupstream", head=3, rows=5, timeout=15)
    dump_good, dump_bad = await good.dump(), await bad.dump()
    assert event_ids(dump_good) == ids("G", 1, 3)
    assert sorted(row_ids(dump_good)) == ids("G", 1, 3)
    assert event_ids(dump_bad) == ids("G", 1, 3)
    assert dump_bad["sync"]["pending"] == 2, dump_bad["sync"]

    verifier = await validating_clients(
        "client-verify", store_id=store_id, blocking_initial_sync=True
    )
    assert event_ids(await verifier.dump()) == ids("G", 1, 3)
    assert gw.log_lines(r"push refused .*instance=app-good") == []
