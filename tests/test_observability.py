"""Operators' view: /healthz, /readyz, /metrics, /stats, the stats/tail/check-config commands,
configuration precedence for the real ``serve`` process, and the log formats.

Endpoint tests run an in-process gateway (so a test can close its store); the command line
runs as real subprocesses against it or against a ``serve`` process of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from gateway.rules import PushRule
from tests.helpers.clients import RpcClient
from tests.helpers.daemon import (
    REPO,
    Daemon,
    Tail,
    free_port,
    none_contain,
    run_cli,
    write_toml,
    ws_url,
)
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import HttpResult, assert_error_body, http_request
from tests.helpers.keys import make_jwt
from tests.helpers.metrics import scrape
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.wire import assert_fail, assert_push_ok, make_events

JWT_SECRET = "metrics-secret-" + "s" * 40
BYPASS = "metrics-bypass-" + "b" * 40


def secret(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}"


def payload(token: str, instance: str = "app-1") -> dict[str, str]:
    return {"instanceId": instance, "authToken": token}


async def get(harness: GatewayHarness, path: str, token: str | None = None) -> HttpResult:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await http_request("GET", f"http://{harness.base}{path}", headers=headers)


class LogEvents(logging.Handler):
    """Records of the in-process gateway, with a wait for a message matching a pattern."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._grew = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._grew.set()

    async def wait(self, pattern: str, within: float = 5 * TIMEOUT_UNIT) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if regex.search(message):
                    return message
            seen = len(self.messages)
            self._grew.clear()
            try:
                await asyncio.wait_for(self._grew.wait(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise AssertionError(f"no log message matching {pattern!r}") from None


@pytest.fixture(name="server_log")
def _server_log() -> Iterator[LogEvents]:
    handler = LogEvents()
    logger = logging.getLogger("gateway.server")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Health


async def test_healthz_and_readyz(gateway: GatewayHarness) -> None:
    health = await get(gateway, "/healthz")
    assert health.status == 200
    ready = await get(gateway, "/readyz")
    assert ready.status == 200

    await gateway.gw.store.close()
    not_ready = await get(gateway, "/readyz")
    assert_error_body(not_ready, 503, "NOT_READY")
    # The process is still alive: liveness and readiness are different questions.
    assert (await get(gateway, "/healthz")).status == 200


async def test_health_endpoints_do_not_touch_sync_state(gateway: GatewayHarness) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await get(gateway, path)).status == 200
    metrics = await scrape(gateway)
    assert metrics.value("gateway_connections_opened_total", transport="ws") == 0
    assert metrics.value("gateway_stores_loaded") == 0
    assert metrics.value("gateway_auth_decisions_total", reason="anonymous") == 0


# ---------------------------------------------------------------------------------------------
# /metrics

DOCUMENTED = {
    "gateway_connections": "gauge",
    "gateway_connections_opened": "counter",
    "gateway_auth_decisions": "counter",
    "gateway_auth_lockouts": "counter",
    "gateway_pushes_accepted": "counter",
    "gateway_events_accepted": "counter",
    "gateway_pushes_rejected": "counter",
    "gateway_server_ahead": "counter",
    "gateway_push_duration_seconds": "histogram",
    "gateway_fanout_duration_seconds": "histogram",
    "gateway_frames_delivered": "counter",
    "gateway_live_subscribers": "gauge",
    "gateway_send_queue_evictions": "counter",
    "gateway_stores_loaded": "gauge",
    "gateway_store_size_bytes": "gauge",
}


async def test_metrics_names_and_types(gateway: GatewayHarness) -> None:
    metrics = await scrape(gateway)
    types = {name: family.type for name, family in metrics.families.items()}
    missing = {name: kind for name, kind in DOCUMENTED.items() if types.get(name) != kind}
    assert not missing, f"missing or mistyped: {missing}; got {types}"
    for name, family in metrics.families.items():
        assert name.startswith("gateway_"), name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), (
                family.samples
            )
    assert metrics.value("gateway_send_queue_evictions_total") == 0
    assert metrics.value("gateway_store_size_bytes") > 0  # the SQLite file exists
    for histogram in ("gateway_push_duration_seconds", "gateway_fanout_duration_seconds"):
        assert metrics.count(histogram) == 0
        assert metrics.value(f"{histogram}_bucket", le="+Inf") == 0


async def test_metrics_follow_connections_pushes_and_pulls(
    gateway: GatewayHarness, server_log: LogEvents
) -> None:
    store = "metrics-store"
    first = await scrape(gateway)
    size_before = first.value("gateway_store_size_bytes")

    client = await RpcClient.open(gateway.ws_url(store), store)
    await client.barrier()  # the session runs
    opened = await scrape(gateway)
    assert opened.value("gateway_connections", transport="ws") == 1
    assert opened.value("gateway_connections_opened_total", transport="ws") == 1
    assert opened.value("gateway_auth_decisions_total", reason="anonymous") == 1

    rid, _ = await client.live_pull()
    assert (await scrape(gateway)).value("gateway_live_subscribers") == 1

    await client.push_ok(make_events(1, 3))
    await client.live_events(rid, 3)
    pushed = await scrape(gateway)
    assert pushed.value("gateway_pushes_accepted_total") == 1
    assert pushed.value("gateway_events_accepted_total") == 3
    assert pushed.count("gateway_push_duration_seconds") == 1
    assert pushed.value("gateway_push_duration_seconds_sum") > 0
    assert pushed.count("gateway_fanout_duration_seconds") == 1
    assert pushed.value("gateway_frames_delivered_total") >= 1
    assert pushed.value("gateway_stores_loaded") == 1
    assert pushed.value("gateway_server_ahead_total") == 0
    assert pushed.value("gateway_store_size_bytes") > size_before

    # A stale push (parent 0 again) is answered with ServerAheadError.
    assert_fail(await client.push(make_events(1, 1)), "ServerAheadError")
    stale = await scrape(gateway)
    assert stale.value("gateway_server_ahead_total") == 1
    assert stale.value("gateway_pushes_rejected_total", reason="server_ahead") == 1
    assert stale.value("gateway_pushes_accepted_total") == 1
    assert stale.value("gateway_events_accepted_total") == 3
    assert stale.count("gateway_push_duration_seconds") == 2

    second = await RpcClient.open(gateway.ws_url(store), store)
    await second.barrier()
    assert (await scrape(gateway)).value("gateway_connections", transport="ws") == 2

    await client.close()
    await server_log.wait(r"^close transport=ws store=metrics-store .*events_in=3 ")
    closed = await scrape(gateway)
    assert closed.value("gateway_connections", transport="ws") == 1
    assert closed.value("gateway_live_subscribers") == 0
    assert closed.value("gateway_connections_opened_total", transport="ws") == 2
    await second.close()


async def test_metrics_auth_decisions_and_lockouts(make_gateway: MakeGateway) -> None:
    harness = await make_gateway(require_auth=True, jwt_secret=JWT_SECRET, bypass_token=BYPASS)
    good = make_jwt(JWT_SECRET, "alice")
    in_grace = make_jwt(JWT_SECRET, "bob", ttl=-3600)  # expired an hour ago: grace
    clients = [
        await RpcClient.open(harness.ws_url("s", payload=payload(good)), "s"),
        await RpcClient.open(harness.ws_url("s", payload=payload(in_grace)), "s"),
        await RpcClient.open(
            harness.ws_url("s", payload={"instanceId": "svc", "serverBypass": BYPASS}), "s"
        ),
    ]
    refused: list[str] = [
        make_jwt(secret("other"), "mallory"),
        "insecure-token-change-me",
        *(make_jwt(secret(f"guess{i}"), "mallory") for i in range(3)),
    ]
    statuses = []
    for token in refused:
        with pytest.raises(InvalidStatus) as info:
            await RpcClient.open(harness.ws_url("s", payload=payload(token)), "s")
        statuses.append(info.value.response.status_code)
    assert statuses == [401, 403, 401, 401, 401]
    forged = make_jwt(secret("guess9"), "mallory")
    with pytest.raises(InvalidStatus) as info:
        await RpcClient.open(harness.ws_url("s", payload=payload(forged, "app-2")), "s")
    assert info.value.response.status_code == 429  # locked out after 5 failures
    # A valid credential from the same address is still admitted.
    clients.append(await RpcClient.open(harness.ws_url("s", payload=payload(good, "app-3")), "s"))

    metrics = await scrape(harness)
    decisions = {
        reason: metrics.value("gateway_auth_decisions_total", reason=reason)
        for reason in (
            "jwt",
            "jwt_grace",
            "bypass",
            "INVALID_TOKEN",
            "DEV_TOKEN_REJECTED",
            "RATE_LIMITED",
        )
    }
    assert decisions == {
        "jwt": 2,
        "jwt_grace": 1,
        "bypass": 1,
        "INVALID_TOKEN": 4,
        "DEV_TOKEN_REJECTED": 1,
        "RATE_LIMITED": 1,
    }
    assert metrics.value("gateway_auth_lockouts_total", cause="INVALID_TOKEN") == 1
    assert metrics.value("gateway_connections", transport="ws") == 4

    # Neither /metrics nor /stats ever shows a credential.
    stats = await get(harness, "/stats", BYPASS)
    assert stats.status == 200
    leaked = none_contain(
        [metrics.text, stats.raw.decode()],
        [JWT_SECRET, BYPASS, good, in_grace, *refused],
    )
    assert not leaked, leaked
    for client in clients:
        await client.close()


# ---------------------------------------------------------------------------------------------
# /stats


async def test_stats_needs_the_bypass_token_and_counts_per_store_and_subject(
    make_gateway: MakeGateway,
) -> None:
    harness = await make_gateway(require_auth=True, jwt_secret=JWT_SECRET, bypass_token=BYPASS)
    assert_error_body(await get(harness, "/stats"), 403, "FORBIDDEN")
    assert_error_body(await get(harness, "/stats", "not-the-token"), 403, "FORBIDDEN")
    assert_error_body(await get(harness, "/stats", JWT_SECRET), 403, "FORBIDDEN")

    alice, bob = make_jwt(JWT_SECRET, "alice"), make_jwt(JWT_SECRET, "bob")
    opened = [
        ("alpha", payload(alice, "a-1")),
        ("alpha", payload(bob, "b-1")),
        ("beta", payload(alice, "a-2")),
        ("beta", {"instanceId": "svc-1", "serverBypass": BYPASS}),
    ]
    clients = []
    for store, body in opened:
        client = await RpcClient.open(harness.ws_url(store, payload=body), store)
        await client.barrier()
        clients.append(client)
    await clients[0].live_pull()

    result = await get(harness, "/stats", BYPASS)
    assert result.status == 200
    assert result.content_type == "application/json"
    stats = result.body
    assert stats["connections"]["ws"] == 4
    assert stats["stores"] == {"alpha": 2, "beta": 2}
    assert stats["subjects"] == {"alice": 2, "bob": 1, "server": 1}
    assert stats["live_subscribers"] == 1
    for client in clients:
        await client.close()


async def test_stats_without_bypass_token_answers_loopback(gateway: GatewayHarness) -> None:
    client = await RpcClient.open(gateway.ws_url("solo"), "solo")
    await client.barrier()
    result = await get(gateway, "/stats")
    assert result.status == 200
    assert result.body["stores"] == {"solo": 1}
    assert result.body["subjects"] == {"anonymous": 1}
    await client.close()


# ---------------------------------------------------------------------------------------------
# gateway stats / gateway tail


async def test_cli_stats(make_gateway: MakeGateway) -> None:
    harness = await make_gateway(require_auth=True, jwt_secret=JWT_SECRET, bypass_token=BYPASS)
    url = f"http://{harness.base}"
    client = await RpcClient.open(
        harness.ws_url("cli-store", payload=payload(make_jwt(JWT_SECRET, "carol"))), "cli-store"
    )
    await client.barrier()
    rc, out, err = await run_cli("stats", "--url", url, env={"SERVER_BYPASS_TOKEN": BYPASS})
    assert rc == 0, err
    stats = json.loads(out)
    assert stats["stores"] == {"cli-store": 1}
    assert stats["subjects"] == {"carol": 1}
    assert BYPASS not in out + err

    rc, out, err = await run_cli("stats", "--url", url)  # no token configured
    assert rc == 1
    assert "403" in err
    await client.close()


@pytest.fixture(name="tails")
async def _tails() -> AsyncIterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        await tail.kill()


@pytest.mark.parametrize("after", [0, 2])
async def test_cli_tail_prints_events_as_json_lines(
    make_gateway: MakeGateway, tails: list[Tail], after: int
) -> None:
    """``gateway tail --store S [--from N]`` as an internal service (bypass token) against
    a gateway that requires auth: the backlog after N, then each event as it is accepted."""
    harness = await make_gateway(require_auth=True, jwt_secret=JWT_SECRET, bypass_token=BYPASS)
    store = f"tail-{after}"
    pusher = await RpcClient.open(
        harness.ws_url(store, payload=payload(make_jwt(JWT_SECRET, "dora"))), store
    )
    await pusher.push_ok(make_events(1, 3))

    args = ["--store", store, "--url", f"http://{harness.base}"]
    if after:
        args += ["--from", str(after)]
    tail = await Tail.start(*args, env={"SERVER_BYPASS_TOKEN": BYPASS})
    tails.append(tail)
    backlog = [await tail.event() for _ in range(3 - after)]
    assert [e["seqNum"] for e in backlog] == list(range(after + 1, 4))
    assert backlog[-1]["args"] == {"id": "client-test-3", "n": 3}

    # The backlog is printed, so the live pull is registered: later pushes follow.
    assert_push_ok(await pusher.push(make_events(4, 2)))
    live = [await tail.event(), await tail.event()]
    assert [e["seqNum"] for e in live] == [4, 5]
    assert live[0]["parentSeqNum"] == 3
    assert await tail.interrupt() == 0
    await pusher.close()


# ---------------------------------------------------------------------------------------------
# gateway check-config


async def test_check_config_redacts_secrets(tmp_path: Path) -> None:
    jwt_secret, previous, bypass = secret("jwt"), secret("prev"), secret("bypass")
    (tmp_path / "jwt").write_text(jwt_secret)
    (tmp_path / "bypass").write_text(bypass + "\n")
    config = write_toml(
        tmp_path / "gateway.toml",
        {
            "server": {"port": 9123},
            "auth": {
                "require_auth": True,
                "jwt_secret_file": str(tmp_path / "jwt"),
                "bypass_token_file": str(tmp_path / "bypass"),
            },
        },
    )
    rc, out, err = await run_cli(
        "check-config", "--config", str(config), env={"JWT_PREVIOUS_SECRET": previous}
    )
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["server"]["port"] == 9123
    assert shown["auth"]["require_auth"] is True
    for key in ("jwt_secret", "jwt_previous_secret", "bypass_token"):
        assert shown["auth"][key] == "<redacted>", key
    assert shown["auth"]["jwt_secret_file"] == str(tmp_path / "jwt")
    assert not none_contain([out, err], [jwt_secret, previous, bypass])


async def test_check_config_reads_systemd_credentials(tmp_path: Path) -> None:
    """The unit's model: REQUIRE_AUTH=true in the environment, the secrets as
    LoadCredential= files in $CREDENTIALS_DIRECTORY, none in the TOML."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    jwt_secret, bypass, admin = secret("jwt"), secret("bypass"), secret("admin")
    (credentials / "jwt_secret").write_text(jwt_secret)
    (credentials / "bypass_token").write_text(bypass)
    (credentials / "admin_token").write_text(admin)
    config = write_toml(tmp_path / "gateway.toml", {"server": {"port": 8787}})
    env = {"REQUIRE_AUTH": "true", "CREDENTIALS_DIRECTORY": str(credentials)}
    rc, out, err = await run_cli("check-config", "--config", str(config), env=env)
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["auth"]["require_auth"] is True
    assert shown["auth"]["jwt_secret"] == "<redacted>"
    assert shown["auth"]["bypass_token"] == "<redacted>"
    assert shown["admin"]["token"] == "<redacted>"
    assert not none_contain([out, err], [jwt_secret, bypass, admin])
    # Without the credentials, production mode has no key: a configuration error.
    rc, out, err = await run_cli(
        "check-config",
        "--config",
        str(config),
        env=env | {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")},
    )
    assert rc == 2
    assert "auth.jwt_secret" in err


async def test_documented_gateway_toml_lists_every_key_with_its_default() -> None:
    """gateway.toml documents every key: loading it changes nothing from the defaults, and
    every key of the effective configuration appears in it (set, or commented out)."""
    rc, documented, err = await run_cli("check-config", "--config", str(REPO / "gateway.toml"))
    assert rc == 0, err
    rc, defaults, err = await run_cli("check-config")
    assert rc == 0, err
    assert json.loads(documented) == json.loads(defaults)
    text = (REPO / "gateway.toml").read_text()
    sections = re.split(r"(?m)^\[(\w+)\]\s*$", text)
    bodies = dict(zip(sections[1::2], sections[2::2], strict=True))
    undocumented = [
        f"{section}.{key}"
        for section, values in json.loads(defaults).items()
        for key in values
        if not re.search(
            rf"(?m)^#?\s*({key}\s*=|\[\[{section}\.{key}\]\])", bodies.get(section, "")
        )
    ]
    assert not undocumented, undocumented
    # An array of tables ([[rules.push]]) is documented by a commented example entry giving
    # each of its keys.
    example = bodies["rules"].partition("# [[rules.push]]")[2]
    assert example, "gateway.toml has no commented [[rules.push]] example"
    missing = [
        f"rules.push.{field.name}"
        for field in dataclasses.fields(PushRule)
        if not re.search(rf"(?m)^#\s*{field.name}\s*=", example)
    ]
    assert not missing, missing


CONFIG_ERRORS = [
    ("[server]\nportt = 1\n", {}, "server.portt"),
    ('[server]\nport = "eighty"\n', {}, "server.port"),
    ("[limits]\ncatchup_window = 1.5\n", {}, "limits.catchup_window"),
    ("[auth]\nrequire_auth = 1\n", {}, "auth.require_auth"),
    ('[log]\nformat = "xml"\n', {}, "log.format"),
    ("[bogus]\nx = 1\n", {}, "bogus"),
    ("[server]\nport = 1\n", {"GATEWAY_SERVER_PORT": "abc"}, "GATEWAY_SERVER_PORT"),
    ("", {"GATEWAY_SERVER_PROT": "1"}, "GATEWAY_SERVER_PROT"),
    ("", {"REQUIRE_AUTH": "maybe"}, "REQUIRE_AUTH"),
    ('[auth]\njwt_secret_file = "/nonexistent/jwt"\n', {}, "auth.jwt_secret_file"),
    ('[auth]\ntrusted_proxies = ["not-an-address"]\n', {}, "auth.trusted_proxies"),
    ("[server\n", {}, "invalid TOML"),
]


@pytest.mark.parametrize(
    ("text", "env", "named"), CONFIG_ERRORS, ids=[named for _, _, named in CONFIG_ERRORS]
)
async def test_check_config_errors_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], named: str
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    rc, out, err = await run_cli("check-config", "--config", str(config), env=env)
    assert rc == 2, (out, err)
    assert named in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["not UTF-8", "a directory"])
async def test_check_config_unreadable_file_is_a_config_error(tmp_path: Path, kind: str) -> None:
    config = tmp_path / "gateway.toml"
    if kind == "a directory":
        config.mkdir()
    else:
        config.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    rc, out, err = await run_cli("check-config", "--config", str(config))
    assert rc == 2, (out, err)
    assert str(config) in err, err
    assert "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------
# Configuration precedence for the real serve process


async def test_serve_precedence_file_env_flags(tmp_path: Path) -> None:
    """file < GATEWAY_<SECTION>_<KEY> < --flags, for the port and the data directory."""
    ports = [free_port() for _ in range(3)]
    dirs = [tmp_path / name for name in ("from-file", "from-env", "from-flag")]
    config = write_toml(
        tmp_path / "gateway.toml",
        {"server": {"port": ports[0]}, "store": {"data_dir": str(dirs[0])}},
    )
    env = {"GATEWAY_SERVER_PORT": str(ports[1]), "GATEWAY_STORE_DATA_DIR": str(dirs[1])}
    flags = ["--port", str(ports[2]), "--data-dir", str(dirs[2])]
    runs = [({}, []), (env, []), (env, flags)]
    for expected, (run_env, run_flags) in enumerate(runs):
        daemon = await Daemon.start("--config", str(config), *run_flags, env=run_env)
        try:
            assert daemon.port == ports[expected], (expected, daemon.port, ports)
            ready = await http_request("GET", f"http://127.0.0.1:{daemon.port}/readyz")
            assert ready.status == 200
            assert (dirs[expected] / "gateway.sqlite3").exists()
            assert await daemon.terminate() == 0
        finally:
            await daemon.kill()
    # Each run used only its own directory.
    for index, directory in enumerate(dirs):
        assert (directory / "gateway.sqlite3").exists(), index


# ---------------------------------------------------------------------------------------------
# Log formats

JSON_KEYS = {"ts", "time", "level", "logger", "message"}


async def _one_session_and_stop(tmp_path: Path, fmt: str) -> tuple[list[str], list[str]]:
    """Serve with ``[log] format``; one JWT session, one refused token; stop. Returns the
    stderr lines and the secrets used."""
    jwt_secret = secret("jwt")
    (tmp_path / "jwt").write_text(jwt_secret)
    config = write_toml(
        tmp_path / "gateway.toml",
        {
            "server": {"port": 0},
            "store": {"data_dir": str(tmp_path / "data")},
            "auth": {"require_auth": True, "jwt_secret_file": str(tmp_path / "jwt")},
            "log": {"format": fmt},
        },
    )
    daemon = await Daemon.start("--config", str(config))
    try:
        token = make_jwt(jwt_secret, "erin")
        bad = make_jwt(secret("other"), "mallory")
        client = await RpcClient.open(ws_url(daemon.port, "logs", payload(token)), "logs")
        await client.push_ok(make_events(1, 2))
        await client.close()
        await daemon.wait_line(r"close transport=ws store=logs")
        with pytest.raises(InvalidStatus):
            await RpcClient.open(ws_url(daemon.port, "logs", payload(bad, "m-1")), "logs")
        await daemon.wait_line(r"refused code=INVALID_TOKEN")
        assert await daemon.terminate() == 0
    finally:
        await daemon.kill()
    return daemon.lines, [jwt_secret, token, bad]


async def test_json_log_format(tmp_path: Path) -> None:
    lines, secrets = await _one_session_and_stop(tmp_path, "json")
    # "listening on ws://HOST:PORT" is the documented startup line, printed as it is.
    listening = [line for line in lines if line.startswith("listening on ws://")]
    assert len(listening) == 1
    records = []
    for line in lines:
        if line in listening:
            continue
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert record.keys() >= JSON_KEYS, record
        records.append(record)
    messages = [r["message"] for r in records]
    opened = [m for m in messages if m.startswith("open transport=ws store=logs")]
    closed = [m for m in messages if m.startswith("close transport=ws store=logs")]
    assert len(opened) == 1, messages
    assert len(closed) == 1, messages
    assert "subject=erin" in opened[0]
    assert "instance=app-1" in opened[0]
    assert re.search(r"duration=\d+\.\ds events_in=2 ", closed[0]), closed[0]
    assert {r["level"] for r in records} >= {"info", "warning"}
    assert any(r["logger"] == "gateway.security" for r in records)
    # One line per connection, never per frame: the two pushes add nothing.
    assert len([m for m in messages if "store=logs" in m]) <= 4, messages
    assert not none_contain(lines, secrets)


async def test_plain_log_format_has_syslog_priorities(tmp_path: Path) -> None:
    lines, secrets = await _one_session_and_stop(tmp_path, "plain")
    log_lines = [line for line in lines if not line.startswith("listening on ws://")]
    assert log_lines
    for line in log_lines:
        assert re.match(r"<[0-7]>[\w.]+: ", line), line
    assert any(re.match(r"<6>gateway\.server: open transport=ws", line) for line in lines)
    assert any(re.match(r"<4>gateway\.security: refused", line) for line in lines)
    assert not none_contain(lines, secrets)
