"""Cross-site WebSocket hijacking (OWASP ASVS 5.0 V4.4.2): ``server.allowed_origins`` refuses
a browser origin that is not the app's, on both transports and before any credential is read.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from websockets.exceptions import InvalidStatus

from gateway.admission import cors_headers, origin_allowed
from gateway.configfile import build_config
from gateway.errors import ConfigError
from tests.helpers.clients import RpcClient
from tests.helpers.harness import MakeGateway
from tests.helpers.http_client import (
    assert_error_body,
    http_post_json,
    http_request,
    refusal_of,
)
from tests.helpers.wire import HTTP_PING, new_store_id, request_frame

APP = "https://app.example.com"
PATTERNS = (APP, "*.corp.example", "http://localhost:5173", "https://*.example.org", "intra.local")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        (APP, True),
        ("https://app.example.com:443", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://app.example.com.evil.test", False),
        ("https://x.corp.example", True),
        ("http://a.b.corp.example:8080", True),
        ("https://corp.example", False),
        ("https://evilcorp.example", False),
        ("http://localhost:5173", True),
        ("http://localhost:5174", False),
        ("https://a.example.org", True),
        ("http://a.example.org", False),
        ("http://intra.local:81", True),
        ("null", False),
        ("not an origin", False),
    ],
)
def test_origin_table(origin: str | None, allowed: bool) -> None:
    """Exact origins (default ports implied), bare hosts (any scheme and port) and
    ``*.`` host patterns (subdomains only, optionally with a scheme)."""
    assert origin_allowed(origin, PATTERNS) is allowed


def test_no_allowlist_means_no_check() -> None:
    """Without ``allowed_origins`` every origin passes (development default)."""
    assert origin_allowed("https://evil.test", ())


async def test_foreign_origin_is_refused_on_both_transports(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A handshake, a POST and a preflight from another site get 403 ORIGIN_FORBIDDEN; the
    app's origin and clients without an Origin are served; nothing reached the auth gate."""
    caplog.set_level(logging.INFO, logger="gateway")
    gw = await make_gateway(allowed_origins=(APP,))
    store = new_store_id()
    evil = {"Origin": "https://evil.test"}
    with pytest.raises(InvalidStatus) as refused:
        await RpcClient.open(gw.ws_url(store), store, additional_headers=evil)
    assert_error_body(refusal_of(refused.value), 403, "ORIGIN_FORBIDDEN")
    ping = request_frame("0", HTTP_PING, {"storeId": store})
    url = gw.http_url(store)
    assert_error_body(await http_post_json(url, ping, headers=evil), 403, "ORIGIN_FORBIDDEN")
    assert_error_body(await http_request("OPTIONS", url, headers=evil), 403, "ORIGIN_FORBIDDEN")
    assert sum(gw.gw.auth.decisions.values()) == 0  # refused before any credential was read
    # The operator can see who a narrow allowlist shuts out.
    for via in ("ws", "http"):
        line = f"refused {via} store={store} origin=https://evil.test code=ORIGIN_FORBIDDEN"
        assert line in caplog.text

    client = await RpcClient.open(gw.ws_url(store), store, additional_headers={"Origin": APP})
    await client.close()
    client = await RpcClient.open(gw.ws_url(store), store)
    await client.close()
    assert (await http_post_json(url, ping, headers={"Origin": APP})).status == 200
    assert (await http_request("OPTIONS", url, headers={"Origin": APP})).status == 204


async def test_allowlist_is_live_on_reload(make_gateway: MakeGateway) -> None:
    """A reload that sets ``allowed_origins`` applies to the next handshake."""
    gw = await make_gateway()
    store = new_store_id()
    evil = {"Origin": "https://evil.test"}
    client = await RpcClient.open(gw.ws_url(store), store, additional_headers=evil)
    await client.close()
    config = gw.gw.config
    server = dataclasses.replace(config.server, allowed_origins=(APP,))
    await gw.gw.reload(dataclasses.replace(config, server=server))
    with pytest.raises(InvalidStatus) as refused:
        await RpcClient.open(gw.ws_url(store), store, additional_headers=evil)
    assert_error_body(refusal_of(refused.value), 403, "ORIGIN_FORBIDDEN")


OTHER = "https://staging.example.com"
ACAO = "Access-Control-Allow-Origin"
VARY = ("Vary", "Origin")


@pytest.mark.parametrize(
    ("origin", "allow", "patterns", "expected"),
    [
        (None, "*", (), ((ACAO, "*"),)),
        (APP, "*", (APP,), ((ACAO, "*"),)),
        (APP, "", (APP,), ()),
        (OTHER, APP, (), ((ACAO, APP),)),
        (APP, APP, (APP, OTHER), ((ACAO, APP), VARY)),
        (OTHER, APP, (APP, OTHER), ((ACAO, OTHER), VARY)),
        ("https://x.corp.example", APP, PATTERNS, ((ACAO, "https://x.corp.example"), VARY)),
        ("https://evil.test", APP, (APP, OTHER), ((ACAO, APP), VARY)),
        (None, APP, (APP, OTHER), ((ACAO, APP), VARY)),
    ],
)
def test_cors_headers_table(
    origin: str | None,
    allow: str,
    patterns: tuple[str, ...],
    expected: tuple[tuple[str, str], ...],
) -> None:
    """``*`` and a named origin without an allowlist go out as configured; with an allowlist
    and a named origin, an allowed request origin is echoed (``Vary: Origin``); empty: none."""
    assert cors_headers(origin, allow, patterns) == expected


async def test_every_allowed_origin_passes_cors(make_gateway: MakeGateway) -> None:
    """With two allowed origins and a named ``cors_allow_origin``, the other allowed origin's
    preflight and POST get its own origin back, so a browser lets the HTTP transport through."""
    gw = await make_gateway(allowed_origins=(APP, OTHER), cors_allow_origin=APP)
    store = new_store_id()
    url = gw.http_url(store)
    ping = request_frame("0", HTTP_PING, {"storeId": store})
    for origin in (APP, OTHER):
        preflight = await http_request(
            "OPTIONS",
            url,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-origin"] == origin
        assert preflight.headers["vary"] == "Origin"
        answer = await http_post_json(url, ping, headers={"Origin": origin})
        assert answer.status == 200
        assert answer.headers["access-control-allow-origin"] == origin
    refused = await http_request("OPTIONS", url, headers={"Origin": "https://evil.test"})
    assert_error_body(refused, 403, "ORIGIN_FORBIDDEN")
    assert refused.headers["access-control-allow-origin"] == APP


PRODUCTION = {"require_auth": True, "jwt_secret": "s" * 32, "cookie_name": "session"}


@pytest.mark.parametrize(
    ("server", "keys"),
    [
        ({}, "auth.cookie_name, server.allowed_origins"),
        ({"allowed_origins": [APP]}, "auth.cookie_name, server.cors_allow_origin"),
    ],
)
def test_cookie_auth_in_production_needs_an_allowlist(server: dict[str, object], keys: str) -> None:
    """Cookie auth in production without an allowlist, or with CORS "*", does not start."""
    with pytest.raises(ConfigError, match=keys):
        build_config({"auth": PRODUCTION, "server": server}, {})


def test_cookie_auth_in_production_with_an_allowlist_starts() -> None:
    config = build_config(
        {"auth": PRODUCTION, "server": {"allowed_origins": [APP], "cors_allow_origin": APP}}, {}
    )
    assert config.server.allowed_origins == (APP,)


async def test_bypass_token_only_from_allowed_networks(make_gateway: MakeGateway) -> None:
    """With bypass_allowed_networks, the right bypass token from another address is refused
    like a wrong one (403 BYPASS_REJECTED in production); from an allowed one it connects."""
    bypass = "b" * 40
    production = {"require_auth": True, "jwt_secret": "s" * 32, "bypass_token": bypass}
    store = new_store_id()
    payload = {"instanceId": "svc", "serverBypass": bypass}
    elsewhere = await make_gateway(**production, bypass_allowed_networks=("10.0.0.0/8",))
    with pytest.raises(InvalidStatus) as refused:
        await RpcClient.open(elsewhere.ws_url(store, payload=payload), store)
    assert_error_body(refusal_of(refused.value), 403, "BYPASS_REJECTED")
    inside = await make_gateway(**production, bypass_allowed_networks=("127.0.0.0/8", "::1"))
    client = await RpcClient.open(inside.ws_url(store, payload=payload), store)
    await client.close()
