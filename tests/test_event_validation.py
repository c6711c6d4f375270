"""Issue 14, event validation, on a real gateway on 127.0.0.1:0, over both transports.

``[rules] event_schemas`` names a JSON file of event name -> JSON Schema of ``args``: a push
whose events do not validate is refused whole (``UnknownError``, note ``EVENT_INVALID: …``
naming the event, its position and where its args failed), with strict mode names missing
from the file too (``EVENT_UNKNOWN``); nothing refused is stored and the next pusher goes on.
A reload with a broken schema file is refused and the old schemas stay in force.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import ConfigError
from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, ws_url
from tests.helpers.harness import MakeGateway
from tests.helpers.http_client import http_push
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import make_events, new_store_id, seqs_of
from tests.test_push_rules import (  # the ws fixture: an RpcClient opener, closed after the test
    Opener,
    _ws,  # noqa: F401
    refusal_note,
    security_lines,
    stored,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)

# make_events' args: {"id": "<client>-<seq>", "n": <seq>}
SCHEMAS: dict[str, Any] = {
    "v1.TestEvent": {
        "type": "object",
        "required": ["id", "n"],
        "properties": {"id": {"type": "string"}, "n": {"type": "integer", "maximum": 100}},
        "additionalProperties": False,
    },
    "v1.Other": {"type": "object"},
}


def schema_file(tmp_path: Path, schemas: dict[str, Any] = SCHEMAS) -> str:
    path = tmp_path / "event-schemas.json"
    path.write_bytes(orjson.dumps(schemas))
    return str(path)


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def invalid(seq: int, **args: Any) -> list[dict[str, Any]]:
    """One event at ``seq`` whose args are replaced by ``args``."""
    (event,) = make_events(seq, 1)
    event["args"] = args
    return [event]


async def test_an_invalid_event_refuses_its_batch_and_stores_nothing(
    make_gateway: MakeGateway, ws: Opener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid events are stored; a batch with one invalid event is refused whole over either
    transport (the note names the event, its position and the failing place in its args,
    never the value); the refusal is counted and logged; the next valid push goes in at the
    same parent."""
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(event_schemas=schema_file(tmp_path))
    store = new_store_id()
    client = await ws(gw, store, {"instanceId": "app-1"})
    await client.push_ok(make_events(1, 2))

    batch = make_events(3, 2) + invalid(5, id="x", n=4242)
    note = refusal_note(await client.push(batch), "EVENT_INVALID")
    assert note.startswith("EVENT_INVALID: event 'v1.TestEvent' (batch[2]): args/n: "), note
    assert "4242" not in note
    http_answer = await http_push(gw.http_url(store), store, invalid(3, id="x"))
    note = refusal_note(http_answer, "EVENT_INVALID")
    assert "(batch[0]): args: " in note, note
    assert "required" in note, note

    await client.push_ok(make_events(3, 2))
    assert seqs_of(await client.pull()) == [1, 2, 3, 4]
    metrics = await scrape(gw)
    assert metrics.value("gateway_pushes_rejected_total", reason="invalid") == 2
    lines = [line for line in security_lines(caplog) if "code=EVENT_INVALID" in line]
    assert len(lines) == 2, lines
    assert f"store={store} " in lines[0], lines
    assert "event=v1.TestEvent" in lines[0], lines
    assert "detail=event 'v1.TestEvent' (batch[2]): args/n:" in lines[0], lines
    assert "4242" not in lines[0]


async def test_strict_mode_refuses_names_missing_from_the_file(
    make_gateway: MakeGateway, ws: Opener, tmp_path: Path
) -> None:
    """Without strict mode an unknown name passes unchecked; with it, it is refused
    (EVENT_UNKNOWN) while the known events still go in."""
    lax = await make_gateway(event_schemas=schema_file(tmp_path))
    store = new_store_id()
    client = await ws(lax, store, {"instanceId": "app-1"})
    await client.push_ok(make_events(1, 1, name="v1.Unlisted"))

    strict = await make_gateway(event_schemas=schema_file(tmp_path), strict_events=True)
    client = await ws(strict, store, {"instanceId": "app-1"})
    batch = make_events(1, 1, name="v1.Other") + make_events(2, 1, name="v1.Unlisted")
    note = refusal_note(await client.push(batch), "EVENT_UNKNOWN")
    assert "event 'v1.Unlisted' (batch[1]) has no schema" in note, note
    await client.push_ok(batch[:1])
    assert [e["name"] for e in await stored(strict, store)] == ["v1.Other"]
    metrics = await scrape(strict)
    assert metrics.value("gateway_pushes_rejected_total", reason="unknown_event") == 1


async def test_a_reload_with_a_broken_schema_file_keeps_the_old_schemas(
    make_gateway: MakeGateway, ws: Opener, tmp_path: Path
) -> None:
    """Reloading with a file that is not JSON, or holds an invalid schema, is refused and
    the schemas in force stay; a reload with a fixed file puts the new one in force."""
    path = schema_file(tmp_path)
    gw = await make_gateway(event_schemas=path)
    store = new_store_id()
    client = await ws(gw, store, {"instanceId": "app-1"})
    config = gw.gw.config

    write(path, '{"v1.TestEvent": ')
    with pytest.raises(ConfigError, match="not JSON"):
        await gw.gw.reload(config)
    write(path, '{"v1.TestEvent": {"type": "nope"}}')
    with pytest.raises(ConfigError, match=r"'v1\.TestEvent' is not a valid JSON Schema"):
        await gw.gw.reload(config)
    refusal_note(await client.push(invalid(1, id="x", n=101)), "EVENT_INVALID")

    loose = dict(SCHEMAS, **{"v1.TestEvent": {"type": "object"}})
    schema_file(tmp_path, loose)
    await gw.gw.reload(dataclasses.replace(config))
    await client.push_ok(invalid(1, id="x", n=101))


async def test_sighup_with_a_broken_schema_file_keeps_the_old_schemas(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The real daemon: a start with a broken file fails; SIGHUP with a broken file is
    refused (the error names the file) and the session keeps being judged by the old one."""
    path = schema_file(tmp_path)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\nport = 0\n[store]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[rules]\nevent_schemas = "{path}"\nstrict_events = true\n'
    )
    daemon = await Daemon.start("--config", str(config))
    daemons.append(daemon)
    store = new_store_id()
    client = await RpcClient.open(ws_url(daemon.port, store), store)
    try:
        refusal_note(await client.push(make_events(1, 1, name="v1.Unlisted")), "EVENT_UNKNOWN")
        write(path, "[]")
        line = await daemon.reload()
        assert "reload refused" in line, line
        assert "expected a JSON object of schemas" in line, line
        refusal_note(await client.push(make_events(1, 1, name="v1.Unlisted")), "EVENT_UNKNOWN")
        await client.push_ok(make_events(1, 1))
    finally:
        await client.close()
