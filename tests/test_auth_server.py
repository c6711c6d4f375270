"""Issue 3 end to end: the auth policy on a real gateway on 127.0.0.1:0.

The decision table over both transports (a refused WebSocket upgrade is an HTTP answer with
``{"error":{"code","message"}}``, never a 101), the token sources, per-store authorization,
the per-IP lockout, push rate limiting, live expiry (close 4001), JWKS, startup validation,
the guarantee that tokens never reach the logs, and ``gateway token mint/decode``. Keys and
secrets come from tests/helpers/keys.py (generated per test session; nothing secret is
committed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.exceptions import InvalidStatus

from gateway.admission import MISSING, Admission, PayloadContext
from gateway.auth import policy as auth
from gateway.auth.gate import AuthGate, JwksCache
from gateway.configfile import build_config, load_config, make_config
from gateway.errors import ConfigError
from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, run_cli, write_toml
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.http_client import (
    HttpResult,
    assert_error_body,
    http_post_json,
    http_request,
    refusal_of,
)
from tests.helpers.keys import (
    AUDIENCE,
    BYPASS,
    DEV_TOKEN,
    EC384_KEY,
    EC_KEY,
    ISSUER,
    OTHER_RSA_KEY,
    OTHER_SECRET,
    RSA_KEY,
    RSA_PUBLIC_PEM,
    SECRET,
    forge_hs256,
    public_pem,
    replace_claims,
    with_token,
)
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.urls import sync_query
from tests.helpers.wire import (
    HTTP_PING,
    HTTP_PUSH,
    NO_MORE,
    assert_push_ok,
    assert_success,
    make_events,
    new_store_id,
    request_frame,
    seqs_of,
)

pytestmark = pytest.mark.timeout(60 * TIMEOUT_UNIT)

DAY = 86_400.0


def mint(
    sub: str | None = "alice",
    *,
    ttl: float = 3600.0,
    key: Any = SECRET,
    algorithm: str = "HS256",
    kid: str | None = None,
    **claims: Any,
) -> str:
    """A token valid for ``ttl`` seconds from now (negative: expired that long ago)."""
    now = time.time()
    body: dict[str, Any] = {"iat": int(now) - 5, "exp": now + ttl, "aud": AUDIENCE}
    if sub is not None:
        body["sub"] = sub
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def bypass(secret: str = BYPASS) -> dict[str, Any]:
    return {"instanceId": "backend-1", "serverBypass": secret}


# Cookie auth in production needs an Origin allowlist and a named CORS origin.
COOKIE_SAFE: dict[str, Any] = {
    "allowed_origins": ("https://app.example.com",),
    "cors_allow_origin": "https://app.example.com",
}


def auth_config(*, require_auth: bool, **more: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "require_auth": require_auth,
        "jwt_secret": SECRET,
        "bypass_token": BYPASS,
        "audience": AUDIENCE,
    }
    config.update(more)
    return config


def with_query_token(url: str, token: str) -> str:
    return f"{url}&{urlencode({'token': token})}"


async def ws_refused(url: str, headers: dict[str, str] | None = None) -> HttpResult:
    """Open a WebSocket that must be refused before the upgrade; return the HTTP answer."""
    try:
        client = await RpcClient.open(url, "unused", additional_headers=headers or {})
    except InvalidStatus as exc:
        return refusal_of(exc)
    await client.close()
    raise AssertionError(f"the upgrade was accepted: {client.ws.response!r}")


async def http_ping(
    gw: GatewayHarness,
    store: str,
    *,
    payload: object = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResult:
    url = gw.http_url(store, payload=payload)
    if token is not None:
        url = with_query_token(url, token)
    return await http_post_json(
        url, request_frame("1", HTTP_PING, {"storeId": store}), headers=headers
    )


def assert_http_accepted(result: HttpResult) -> None:
    assert result.status == 200, f"HTTP {result.status}: {result.raw[:300]!r}"
    assert isinstance(result.body, list), result.body
    assert_success(result.body[-1])


Opener = Callable[..., Awaitable[RpcClient]]


@pytest.fixture(name="ws")
async def _ws(make_gateway: MakeGateway) -> AsyncIterator[Opener]:
    """``await ws(url, store, payload=..., headers=...)``: an RpcClient closed at teardown
    (before the gateways stop, since this fixture depends on make_gateway)."""
    opened: list[RpcClient] = []

    async def open_(
        url: str, store: str, *, payload: object = None, headers: dict[str, str] | None = None
    ) -> RpcClient:
        client = await RpcClient.open(url, store, payload=payload, additional_headers=headers or {})
        opened.append(client)
        assert client.ws.response is not None
        assert client.ws.response.status_code == 101
        return client

    yield open_
    for client in opened:
        await client.close()


# ---------------------------------------------------------------------------------------------
# The decision table, end to end


Expected = str | tuple[int, str]  # an accepted reason, or (status, code)

E2E_TABLE: list[tuple[str, Callable[[], object], float, Expected, Expected]] = [
    ("valid-jwt", lambda: with_token(mint()), DAY, auth.R_JWT, auth.R_JWT),
    (
        "expired-within-grace",
        lambda: with_token(mint(ttl=-3600)),
        DAY,
        auth.R_GRACE,
        auth.R_GRACE,
    ),
    (
        "expired-beyond-grace",
        lambda: with_token(mint(ttl=-2 * DAY)),
        DAY,
        auth.R_EXPIRED_ANON,
        (401, "TOKEN_EXPIRED"),
    ),
    (
        "expired-grace-disabled",
        lambda: with_token(mint(ttl=-120)),
        0.0,
        auth.R_EXPIRED_ANON,
        (401, "TOKEN_EXPIRED"),
    ),
    (
        "dev-token",
        lambda: with_token(DEV_TOKEN),
        DAY,
        auth.R_DEV,
        (403, "DEV_TOKEN_REJECTED"),
    ),
    ("correct-bypass", bypass, DAY, auth.R_BYPASS, auth.R_BYPASS),
    (
        "wrong-bypass",
        lambda: bypass(BYPASS[::-1]),
        DAY,
        auth.R_BYPASS_ANON,
        (403, "BYPASS_REJECTED"),
    ),
    (
        "no-credential",
        lambda: {"instanceId": "device-1"},
        DAY,
        auth.R_ANONYMOUS,
        (401, "MISSING_TOKEN"),
    ),
    (
        "bad-signature",
        lambda: with_token(mint(key=OTHER_SECRET)),
        DAY,
        auth.R_INVALID_ANON,
        (401, "INVALID_TOKEN"),
    ),
    (
        "alg-none",
        lambda: with_token(jwt.encode({"sub": "a", "exp": time.time() + 60}, "", "none")),
        DAY,
        auth.R_INVALID_ANON,
        (401, "INVALID_TOKEN"),
    ),
    (
        "wrong-audience",
        lambda: with_token(mint(aud="other-app")),
        DAY,
        auth.R_INVALID_ANON,
        (401, "INVALID_TOKEN"),
    ),
    (
        "future-nbf",
        lambda: with_token(mint(nbf=time.time() + 3600)),
        DAY,
        auth.R_INVALID_ANON,
        (401, "INVALID_TOKEN"),
    ),
    (
        "expired-and-bad-signature",
        lambda: with_token(mint(key=OTHER_SECRET, ttl=-3600)),
        DAY,
        auth.R_INVALID_ANON,
        (401, "INVALID_TOKEN"),
    ),
    (
        "garbage",
        lambda: with_token("garbage"),
        DAY,
        auth.R_INVALID_ANON,
        (401, "INVALID_TOKEN"),
    ),
]

E2E_CELLS = [
    pytest.param(make, grace, require_auth, prod if require_auth else dev, id=f"{cid}-{mode}")
    for cid, make, grace, dev, prod in E2E_TABLE
    for require_auth, mode in ((False, "development"), (True, "production"))
]


@pytest.mark.parametrize(("make_payload", "grace", "require_auth", "expected"), E2E_CELLS)
async def test_decision_table(
    make_gateway: MakeGateway,
    ws: Opener,
    make_payload: Callable[[], object],
    grace: float,
    require_auth: bool,
    expected: Expected,
) -> None:
    """Each cell over the WebSocket upgrade and the HTTP transport."""
    gw = await make_gateway(**auth_config(require_auth=require_auth), grace_period=grace)
    store = new_store_id()
    payload = make_payload()
    url = gw.ws_url(store, payload=payload)
    if isinstance(expected, str):
        client = await ws(url, store, payload=payload)
        items = await client.pull()
        assert items[-1]["pageInfo"] == NO_MORE
        assert_http_accepted(await http_ping(gw, store, payload=payload))
        assert gw.gw.auth.decisions == Counter({expected: 2})
    else:
        status, code = expected
        assert_error_body(await ws_refused(url), status, code)
        assert_error_body(await http_ping(gw, store, payload=payload), status, code)
        assert gw.gw.auth.decisions == Counter({code: 2})
        assert gw.gw.sessions.counters.connections_total["ws"] == 0


async def test_refused_client_never_gets_a_websocket(make_gateway: MakeGateway) -> None:
    """On the wire: the refusal is a complete HTTP response, then the server closes."""
    gw = await make_gateway(**auth_config(require_auth=True))
    target = "/?" + sync_query("s", payload=with_token("garbage"))
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {gw.base}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    response = b""
    try:
        writer.write(request.encode())
        await writer.drain()
        async with asyncio.timeout(5 * TIMEOUT_UNIT):
            while chunk := await reader.read(65536):  # until the server closes
                response += chunk
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"sec-websocket-accept" not in head.lower()
    assert json.loads(body)["error"]["code"] == "INVALID_TOKEN"
    assert gw.gw.sessions.counters.connections_total["ws"] == 0


# ---------------------------------------------------------------------------------------------
# Token sources


GOOD = "good"
BAD = "bad"

SOURCES = [
    # id, payload authToken, ?token=, Authorization, Cookie, refusal code (None: accepted)
    ("payload", GOOD, None, None, None, None),
    ("query", None, GOOD, None, None, None),
    ("header", None, None, "Bearer {good}", None, None),
    ("header-lowercase-scheme", None, None, "bearer {good}", None, None),
    ("header-uppercase-scheme", None, None, "BEARER {good}", None, None),
    ("cookie", None, None, None, "theme=dark; sess={good}; x=1", None),
    ("payload-beats-query", BAD, GOOD, None, None, "INVALID_TOKEN"),
    ("payload-valid-query-bad", GOOD, BAD, "Bearer {bad}", "sess={bad}", None),
    ("query-beats-header", None, BAD, "Bearer {good}", None, "INVALID_TOKEN"),
    ("header-beats-cookie", None, None, "Bearer {bad}", "sess={good}", "INVALID_TOKEN"),
    ("query-valid-header-bad", None, GOOD, "Bearer {bad}", "sess={bad}", None),
    ("non-bearer-header-is-ignored", None, None, "Basic {good}", "sess={good}", None),
    ("other-cookie-name-is-ignored", None, None, None, "session={good}", "MISSING_TOKEN"),
]


@pytest.mark.parametrize(
    ("in_payload", "in_query", "authorization", "cookie", "refused"),
    [pytest.param(*case[1:], id=case[0]) for case in SOURCES],
)
async def test_token_sources(
    make_gateway: MakeGateway,
    ws: Opener,
    in_payload: str | None,
    in_query: str | None,
    authorization: str | None,
    cookie: str | None,
    refused: str | None,
) -> None:
    """payload authToken > ?token= > Authorization: Bearer > cookie, on both transports."""
    gw = await make_gateway(**auth_config(require_auth=True), cookie_name="sess", **COOKIE_SAFE)
    tokens = {GOOD: mint(), BAD: mint(key=OTHER_SECRET)}
    payload: dict[str, Any] = {"instanceId": "device-1"}
    if in_payload is not None:
        payload["authToken"] = tokens[in_payload]
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(good=tokens[GOOD], bad=tokens[BAD])
    if cookie is not None:
        headers["Cookie"] = cookie.format(good=tokens[GOOD], bad=tokens[BAD])
    store = new_store_id()
    url = gw.ws_url(store, payload=payload)
    query = None if in_query is None else tokens[in_query]
    if query is not None:
        url = with_query_token(url, query)
    result = await http_ping(gw, store, payload=payload, token=query, headers=headers)
    if refused is None:
        client = await ws(url, store, payload=payload, headers=headers)
        await client.push_ok(make_events(1, 1))
        assert_http_accepted(result)
    else:
        assert_error_body(await ws_refused(url, headers), 401, refused)
        assert_error_body(result, 401, refused)


async def test_garbage_headers_and_cookies(make_gateway: MakeGateway) -> None:
    """Garbage in Authorization or Cookie is a stable 4xx, and harms no one else."""
    gw = await make_gateway(
        **auth_config(require_auth=True), cookie_name="sess", lockout_failures=100, **COOKIE_SAFE
    )
    store = new_store_id()
    payload = {"instanceId": "device-1"}
    cases = [
        ({"Authorization": "Bearer"}, "MISSING_TOKEN"),
        ({"Authorization": "Bearer not.a.jwt"}, "INVALID_TOKEN"),
        ({"Authorization": "Bearer \xff\xfe\xfd"}, "INVALID_TOKEN"),
        ({"Cookie": ";;=;sess;==="}, "MISSING_TOKEN"),
        ({"Cookie": "sess=\xff\xfe"}, "INVALID_TOKEN"),
    ]
    for headers, code in cases:
        result = await http_ping(gw, store, payload=payload, headers=headers)
        assert_error_body(result, 401, code)
    assert_http_accepted(await http_ping(gw, store, payload=with_token(mint())))


BAD_INPUT = [
    # id, raw payload parameter or object, status, code
    ("payload-not-json", "%257Bnope", 400, "BAD_PAYLOAD"),
    ("payload-array", ["authToken"], 400, "BAD_PAYLOAD"),
    ("payload-string", "token", 400, "BAD_PAYLOAD"),
    ("authToken-number", {"instanceId": "i", "authToken": 5}, 400, "BAD_PAYLOAD"),
    ("authToken-object", {"instanceId": "i", "authToken": {"a": 1}}, 400, "BAD_PAYLOAD"),
    ("serverBypass-list", {"instanceId": "i", "serverBypass": [BYPASS]}, 400, "BAD_PAYLOAD"),
    ("instanceId-missing", {"authToken": "x"}, 400, "BAD_PAYLOAD"),
    ("instanceId-too-long", {"instanceId": "i" * 129}, 400, "BAD_PAYLOAD"),
    ("instanceId-bad-chars", {"instanceId": "a b<script>"}, 400, "BAD_PAYLOAD"),
    ("token-over-cap", {"instanceId": "i", "authToken": "t" * 2000}, 400, "TOKEN_TOO_LARGE"),
    ("bypass-over-cap", {"instanceId": "i", "serverBypass": "b" * 2000}, 400, "TOKEN_TOO_LARGE"),
]


@pytest.mark.parametrize(
    ("payload", "status", "code"), [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT]
)
async def test_bad_payloads(
    make_gateway: MakeGateway, ws: Opener, payload: object, status: int, code: str
) -> None:
    gw = await make_gateway(
        **auth_config(require_auth=True), lockout_failures=100, max_token_bytes=1024
    )
    store = new_store_id()
    if isinstance(payload, str) and payload.startswith("%"):
        ws_url = f"ws://{gw.base}/?storeId={store}&transport=ws&payload={payload}"
        http_url = f"http://{gw.base}/?storeId={store}&transport=http&payload={payload}"
    else:
        ws_url, http_url = gw.ws_url(store, payload=payload), gw.http_url(store, payload=payload)
    assert_error_body(await ws_refused(ws_url), status, code)
    frame = request_frame("1", HTTP_PING, {"storeId": store})
    assert_error_body(await http_post_json(http_url, frame), status, code)
    # Other clients are unaffected.
    good = with_token(mint())
    await ws(gw.ws_url(store, payload=good), store, payload=good)


async def post_oversized(gw: GatewayHarness, target: str, headers: dict[str, str]) -> HttpResult:
    """POST an oversized request head and read the answer.

    The gateway answers 431 after the first 32 KB and closes with the rest unread, so the
    kernel resets the connection: a client that insists on sending everything first (like
    http.client) may fail with ECONNRESET before reading. This one reads what arrived."""
    lines = [f"POST {target} HTTP/1.1", f"Host: {gw.base}", "Content-Length: 2"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n{}").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    response = b""
    try:
        writer.write(request)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        try:
            async with asyncio.timeout(5 * TIMEOUT_UNIT):
                while chunk := await reader.read(65536):
                    response += chunk
        except ConnectionError:
            pass
    finally:
        writer.close()
    head, _, raw = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    names = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        names[name.strip().lower()] = value.strip()
    assert status_line.startswith("HTTP/1.1 "), response[:200]
    body = raw[: int(names.get("content-length", len(raw)))]
    return HttpResult(int(status_line.split()[1]), names, body, json.loads(body))


async def test_100kb_token_anywhere(make_gateway: MakeGateway, ws: Opener) -> None:
    """A 100 KB token in the URL, the payload or a header is a 4xx before any verification
    (the request line and header limits answer first)."""
    gw = await make_gateway(**auth_config(require_auth=True))
    store = new_store_id()
    payload = {"instanceId": "i"}
    big = mint(pad="x" * 100_000)
    url = with_query_token(gw.ws_url(store, payload=payload), big)
    assert (await ws_refused(url)).status == 414
    header = {"Authorization": f"Bearer {big}"}
    assert (await ws_refused(gw.ws_url(store, payload=payload), header)).status == 431
    in_payload = with_token(big)
    assert (await ws_refused(gw.ws_url(store, payload=in_payload))).status == 414
    http_target = "/?" + sync_query(store, payload=payload, transport="http")
    for target, headers in (
        (with_query_token(http_target, big), {}),
        (http_target, header),
        (http_target, {"Cookie": f"sess={big}"}),
        ("/?" + sync_query(store, payload=in_payload, transport="http"), {}),
    ):
        result = await post_oversized(gw, target, headers)
        assert_error_body(result, 431, "HEADERS_TOO_LARGE")
    # Just over the cap, but small enough for the request line: the token cap answers.
    over = "t" * 9000
    result = await http_ping(gw, store, payload=payload, token=over)
    assert_error_body(result, 400, "TOKEN_TOO_LARGE")
    good = with_token(mint())
    await ws(gw.ws_url(store, payload=good), store, payload=good)
    assert gw.gw.auth.decisions[auth.R_JWT] == 1


# ---------------------------------------------------------------------------------------------
# The attack list, against an RS256 gateway


@pytest.fixture(name="rsa_pem_file")
def _rsa_pem_file(tmp_path: Path) -> str:
    path = tmp_path / "rsa.pem"
    path.write_bytes(RSA_PUBLIC_PEM)
    return str(path)


def _admin_claims() -> dict[str, Any]:
    return {"sub": "admin", "exp": time.time() + 3600, "aud": AUDIENCE, "iss": ISSUER}


def _forge_hs256_with_public_pem() -> str:
    return forge_hs256({"alg": "HS256", "typ": "JWT"}, _admin_claims(), RSA_PUBLIC_PEM)


def _tampered() -> str:
    return replace_claims(mint(key=RSA_KEY, algorithm="RS256", iss=ISSUER), _admin_claims())


def rs(**kw: Any) -> str:
    kw.setdefault("iss", ISSUER)
    return mint(key=RSA_KEY, algorithm="RS256", **kw)


ATTACKS: list[tuple[str, Callable[[], str], str]] = [
    ("alg-none", lambda: jwt.encode({"sub": "x", "exp": time.time() + 60}, "", "none"), ""),
    ("hs256-keyed-with-rs-public-pem", _forge_hs256_with_public_pem, ""),
    ("tampered-payload", _tampered, ""),
    (
        "signed-by-another-rsa-key",
        lambda: mint(key=OTHER_RSA_KEY, algorithm="RS256", iss=ISSUER),
        "",
    ),
    ("expired-beyond-grace", lambda: rs(ttl=-2 * DAY), "TOKEN_EXPIRED"),
    ("future-nbf", lambda: rs(nbf=time.time() + 600), ""),
    ("wrong-audience", lambda: rs(aud="evil"), ""),
    ("wrong-issuer", lambda: rs(iss="https://evil.test"), ""),
    ("missing-subject", lambda: rs(sub=None), ""),
    ("es256-when-only-rs256", lambda: mint(key=EC_KEY, algorithm="ES256", iss=ISSUER), ""),
]


@pytest.mark.parametrize(
    ("make_token", "code"), [pytest.param(make, code, id=cid) for cid, make, code in ATTACKS]
)
@pytest.mark.parametrize("with_hs", [False, True], ids=["rs256-only", "rs256-and-hs256"])
async def test_attack_list(
    make_gateway: MakeGateway,
    ws: Opener,
    rsa_pem_file: str,
    make_token: Callable[[], str],
    code: str,
    with_hs: bool,
) -> None:
    """Each attack is refused 401; a genuine RS256 token is accepted by the same gateway."""
    algorithms = ["RS256", "HS256"] if with_hs else ["RS256"]
    gw = await make_gateway(
        require_auth=True,
        algorithms=algorithms,
        public_key_files=[rsa_pem_file],
        jwt_secret=SECRET if with_hs else "",
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    store = new_store_id()
    code = code or "INVALID_TOKEN"
    payload = with_token(make_token())
    assert_error_body(await ws_refused(gw.ws_url(store, payload=payload)), 401, code)
    assert_error_body(await http_ping(gw, store, payload=payload), 401, code)
    genuine = with_token(rs())
    await ws(gw.ws_url(store, payload=genuine), store)
    # An HS256 token signed with the real HS secret is valid only where HS256 is configured.
    hs = with_token(mint(iss=ISSUER))
    if with_hs:
        assert_http_accepted(await http_ping(gw, store, payload=hs))
    else:
        assert_error_body(await http_ping(gw, store, payload=hs), 401, "INVALID_TOKEN")


async def test_key_of_another_curve_is_a_401_not_a_500(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """With P-384 and P-256 keys configured, a forged ES256 token is refused 401 and counts
    towards the lockout (an exception in the hook would answer 500 and count nothing)."""
    paths = []
    for name, key in (("p384.pem", EC384_KEY), ("p256.pem", EC_KEY)):
        (tmp_path / name).write_bytes(public_pem(key))
        paths.append(str(tmp_path / name))
    gw = await make_gateway(
        require_auth=True,
        algorithms=["ES256", "ES384"],
        public_key_files=paths,
        lockout_failures=2,
    )
    store = new_store_id()
    genuine = with_token(mint(key=EC_KEY, algorithm="ES256", aud=None))
    assert_http_accepted(await http_ping(gw, store, payload=genuine))
    forged = [
        with_token(mint(key=EC_KEY, algorithm="ES256", aud=None, sub=sub)[:-8] + "AAAAAAAA")
        for sub in ("x", "y")
    ]
    assert_error_body(await http_ping(gw, store, payload=forged[0]), 401, "INVALID_TOKEN")
    result = await ws_refused(gw.ws_url(store, payload=forged[1]))
    assert_error_body(result, 401, "INVALID_TOKEN")
    # Locked out for failures; the genuine token is still admitted.
    third = with_token(mint(key=EC_KEY, algorithm="ES256", aud=None, sub="z")[:-8] + "AAAAAAAA")
    assert_error_body(await http_ping(gw, store, payload=third), 429, "RATE_LIMITED")
    assert_http_accepted(await http_ping(gw, store, payload=genuine))


# ---------------------------------------------------------------------------------------------
# Per-store authorization


async def test_store_authorization(make_gateway: MakeGateway, ws: Opener) -> None:
    gw = await make_gateway(
        **auth_config(require_auth=True), stores_claim="stores", lockout_failures=100
    )
    alice = with_token(mint(stores=["app-*", "exact"]))
    for store in ("app-1", "app-", "exact"):
        client = await ws(gw.ws_url(store, payload=alice), store, payload=alice)
        await client.push_ok(make_events(1, 1))
        assert_http_accepted(await http_ping(gw, store, payload=alice))
    for store in ("exactly", "other", "App-1", "xapp-1"):
        assert_error_body(await ws_refused(gw.ws_url(store, payload=alice)), 403, "STORE_FORBIDDEN")
        result = await http_ping(gw, store, payload=alice)
        assert_error_body(result, 403, "STORE_FORBIDDEN")

    # A comma-separated string claim; no claim at all means no store.
    csv = with_token(mint(sub="carol", stores="team-a, team-b"))
    await ws(gw.ws_url("team-b", payload=csv), "team-b")
    assert_error_body(await ws_refused(gw.ws_url("team-c", payload=csv)), 403, "STORE_FORBIDDEN")
    none = with_token(mint(sub="dave"))
    assert_error_body(await ws_refused(gw.ws_url("app-1", payload=none)), 403, "STORE_FORBIDDEN")

    # Within grace the claim still applies.
    graced = with_token(mint(ttl=-60, stores=["app-*"]))
    await ws(gw.ws_url("app-2", payload=graced), "app-2")
    assert_error_body(await ws_refused(gw.ws_url("zzz", payload=graced)), 403, "STORE_FORBIDDEN")

    # Bypass connections may use any store, and see what alice pushed.
    for store in ("app-1", "other", "exact"):
        client = await ws(gw.ws_url(store, payload=bypass()), store, payload=bypass())
        assert seqs_of(await client.pull()) == ([1] if store != "other" else [])
    assert gw.gw.auth.decisions["STORE_FORBIDDEN"] == 4 * 2 + 3


# ---------------------------------------------------------------------------------------------
# Lockout


async def test_lockout_per_client_ip(
    make_gateway: MakeGateway, ws: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.security")
    gw = await make_gateway(
        **auth_config(require_auth=True), lockout_failures=3, trusted_proxies=["127.0.0.1"]
    )
    store = new_store_id()
    good = with_token(mint())
    good_url = gw.ws_url(store, payload=good)
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    for guess in ("guess-1", "guess-2"):
        bad_url = gw.ws_url(store, payload=with_token(guess))
        assert_error_body(await ws_refused(bad_url, attacker), 401, "INVALID_TOKEN")
    assert not [r for r in caplog.records if "lockout" in r.getMessage()]
    result = await http_ping(gw, store, payload=with_token("guess-3"), headers=attacker)
    assert_error_body(result, 401, "INVALID_TOKEN")

    # Locked out: further failures from that address get 429 on either transport ...
    guess_url = gw.ws_url(store, payload=with_token("guess-4"))
    result = await ws_refused(guess_url, attacker)
    assert_error_body(result, 429, "RATE_LIMITED")
    assert 1 <= int(result.headers["retry-after"]) <= 900
    result = await http_ping(gw, store, payload=with_token("guess-5"), headers=attacker)
    assert_error_body(result, 429, "RATE_LIMITED")
    assert 1 <= int(result.headers["retry-after"]) <= 900
    # ... a client-supplied address to the left of the real one changes nothing ...
    spoofed = {"X-Forwarded-For": "198.51.100.99, 203.0.113.7"}
    assert_error_body(await ws_refused(guess_url, spoofed), 429, "RATE_LIMITED")
    # ... and a valid credential from the same address is never refused (a shared NAT).
    await ws(good_url, store, payload=good, headers=attacker)
    assert_http_accepted(await http_ping(gw, store, payload=good, headers=attacker))
    bypassed = gw.ws_url(store, payload=bypass())
    await ws(bypassed, store, payload=bypass(), headers=attacker)

    # Other addresses are unaffected, including the proxy itself.
    await ws(good_url, store, payload=good, headers={"X-Forwarded-For": "203.0.113.8"})
    await ws(good_url, store, payload=good)
    other = {"X-Forwarded-For": "203.0.113.9"}
    bad_url = gw.ws_url(store, payload=with_token("guess-1"))
    assert_error_body(await ws_refused(bad_url, other), 401, "INVALID_TOKEN")

    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.security"]
    assert sum("lockout ip=203.0.113.7" in line for line in lines) == 1, lines
    assert gw.gw.auth.lockouts == {"INVALID_TOKEN": 1}


async def test_forwarded_for_ignored_without_trusted_proxy(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """Without trusted_proxies the header is the client's word: failures count against the
    socket address whatever it says, so rotating it does not escape the lockout."""
    gw = await make_gateway(**auth_config(require_auth=True), lockout_failures=3)
    store = new_store_id()
    for i in range(3):
        headers = {"X-Forwarded-For": f"198.51.100.{i}"}
        bad_url = gw.ws_url(store, payload=with_token(f"guess-{i}"))
        assert_error_body(await ws_refused(bad_url, headers), 401, "INVALID_TOKEN")
    guess = with_token("guess-x")
    result = await ws_refused(gw.ws_url(store, payload=guess), {"X-Forwarded-For": "192.0.2.1"})
    assert_error_body(result, 429, "RATE_LIMITED")


async def test_forwarded_for_from_untrusted_peer_is_ignored(make_gateway: MakeGateway) -> None:
    """A proxy list that does not include the peer: its header is ignored too."""
    gw = await make_gateway(
        **auth_config(require_auth=True), lockout_failures=2, trusted_proxies=["10.0.0.0/8"]
    )
    store = new_store_id()
    for i in range(2):
        result = await http_ping(
            gw,
            store,
            payload=with_token(f"guess-{i}"),
            headers={"X-Forwarded-For": f"192.0.2.{i}"},
        )
        assert_error_body(result, 401, "INVALID_TOKEN")
    result = await http_ping(gw, store, payload=with_token("guess-x"))
    assert_error_body(result, 429, "RATE_LIMITED")


async def test_retrying_one_refused_credential_does_not_lock_out(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """The real client retries a refused handshake forever with the same token: that counts
    once, so one stale app does not lock out its neighbours behind the same address. The
    same goes for a repeated missing credential. Different guesses all count."""
    gw = await make_gateway(**auth_config(require_auth=True), lockout_failures=3)
    store = new_store_id()
    stale = with_token(mint(ttl=-2 * DAY))
    for _ in range(6):
        assert_error_body(await ws_refused(gw.ws_url(store, payload=stale)), 401, "TOKEN_EXPIRED")
        result = await http_ping(gw, store, payload={"instanceId": "d"})
        assert_error_body(result, 401, "MISSING_TOKEN")
    good = with_token(mint())
    await ws(gw.ws_url(store, payload=good), store, payload=good)
    # One failure is on the books (the missing token; an expired-but-authentic token is a
    # stale app, not a guess, and never counts): two new guesses lock the address.
    for guess in ("guess-1", "guess-2"):
        result = await http_ping(gw, store, payload=with_token(guess))
        assert_error_body(result, 401, "INVALID_TOKEN")
    result = await http_ping(gw, store, payload=with_token("guess-3"))
    assert_error_body(result, 429, "RATE_LIMITED")
    assert_http_accepted(await http_ping(gw, store, payload=good))
    assert gw.gw.auth.lockouts == {"INVALID_TOKEN": 1}


async def test_expired_authentic_tokens_never_lock_out(make_gateway: MakeGateway) -> None:
    """Twenty colleagues behind one address whose tokens expired beyond the grace window get
    401 TOKEN_EXPIRED each, and lock nobody out: a forged token after them is still a plain
    401, and a valid one is admitted."""
    gw = await make_gateway(**auth_config(require_auth=True), lockout_failures=5)
    store = new_store_id()
    for i in range(20):
        stale = with_token(mint(ttl=-2 * DAY, sub=f"colleague-{i}"))
        assert_error_body(await http_ping(gw, store, payload=stale), 401, "TOKEN_EXPIRED")
    assert_error_body(
        await http_ping(gw, store, payload=with_token("forged")), 401, "INVALID_TOKEN"
    )
    assert_http_accepted(await http_ping(gw, store, payload=with_token(mint())))
    assert gw.gw.auth.lockouts == {}
    assert gw.gw.auth.decisions["TOKEN_EXPIRED"] == 20


# ---------------------------------------------------------------------------------------------
# Push rate limiting


async def test_push_rate_limit_delays_never_drops(make_gateway: MakeGateway, ws: Opener) -> None:
    """push_rate=5, burst=1: six pushes of one subject are all acked, over >= 1 s."""
    gw = await make_gateway(**auth_config(require_auth=True), push_rate=5, push_burst=1)
    store = new_store_id()
    alice = with_token(mint())
    client = await ws(gw.ws_url(store, payload=alice), store, payload=alice)
    backend = await client.backend_id()
    started = time.monotonic()
    for seq in range(1, 7):
        assert_push_ok(await client.push(make_events(seq, 1), backend))
    elapsed = time.monotonic() - started
    assert elapsed >= 0.95, f"6 pushes at 5/s with burst 1 took only {elapsed:.3f} s"
    assert seqs_of(await client.pull()) == [1, 2, 3, 4, 5, 6]


async def test_push_rate_limit_over_http(make_gateway: MakeGateway) -> None:
    """The HTTP transport shares the limiter: three pushes at 5/s take >= 0.4 s."""
    gw = await make_gateway(**auth_config(require_auth=True), push_rate=5, push_burst=1)
    store = new_store_id()
    url = gw.http_url(store, payload=with_token(mint(sub="carol")))
    started = time.monotonic()
    for seq in range(1, 4):
        body = {"storeId": store, "batch": make_events(seq, 1), "backendId": {"_tag": "None"}}
        result = await http_post_json(url, request_frame(str(seq), HTTP_PUSH, body))
        assert result.status == 200, result.raw
        assert_push_ok(result.body[-1])
    elapsed = time.monotonic() - started
    assert elapsed >= 0.38, f"3 pushes at 5/s with burst 1 took only {elapsed:.3f} s"


async def test_only_jwt_subjects_are_rate_limited() -> None:
    """The gate marks JWT (and grace) admissions for the push limiter, not bypass/dev."""
    config = make_config(**auth_config(require_auth=False), data_dir="/nonexistent")
    gate = AuthGate(config.auth)

    async def admit(payload: object) -> Admission:
        context = PayloadContext(
            store_id="s", payload=payload, transport="ws", headers={}, remote_addr="1.2.3.4:5"
        )
        result = await gate(context)
        assert isinstance(result, Admission), result
        return result

    assert (await admit(with_token(mint()))).rate_limited
    assert (await admit(with_token(mint(ttl=-60)))).rate_limited
    assert not (await admit(bypass())).rate_limited
    assert not (await admit(with_token(DEV_TOKEN))).rate_limited
    assert not (await admit(MISSING)).rate_limited
    admission = await admit(with_token(mint(sub="zoe")))
    assert admission.subject == "zoe"
    assert admission.instance_id == "device-1"


# ---------------------------------------------------------------------------------------------
# Live expiry


async def test_live_session_closed_when_token_expires(
    make_gateway: MakeGateway, ws: Opener
) -> None:
    """exp = now + 2 s, no grace, no leeway: the live connection is closed 4001 at expiry;
    a grace-admitted session ends at exp + grace; a bypass session on the same server stays."""
    strict = await make_gateway(**auth_config(require_auth=True), grace_period=0, leeway=0)
    graced = await make_gateway(**auth_config(require_auth=True), grace_period=3602, leeway=0)
    store = new_store_id()
    expires = time.time() + 2
    short = with_token(mint(ttl=2))
    old = with_token(mint(ttl=-3600))
    a = await ws(strict.ws_url(store, payload=short), store, payload=short)
    b = await ws(graced.ws_url(store, payload=old), store, payload=old)
    server = await ws(strict.ws_url(store, payload=bypass()), store, payload=bypass())
    for client in (a, b, server):
        await client.live_pull()
    await a.push_ok(make_events(1, 1))  # usable until it expires

    async def closed(client: RpcClient) -> float:
        await asyncio.wait_for(client.ws.wait_closed(), 6 * TIMEOUT_UNIT)
        return time.time()

    closed_a, closed_b = await asyncio.gather(closed(a), closed(b))
    for client, at in ((a, closed_a), (b, closed_b)):
        assert client.ws.close_code == 4001
        assert client.ws.close_reason == "token expired"
        assert at >= expires - 0.5, f"closed {expires - at:.2f} s before expiry"
    # The bypass session on the same server is still open and answering.
    await server.barrier()
    assert server.ws.close_code is None


# ---------------------------------------------------------------------------------------------
# JWKS


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that gave up (the jwks_timeout test) is not an error here


class JwksServer:
    """A JWKS endpoint on 127.0.0.1:0 (http.server in a thread) that counts its fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.fetches = 0
        self.requested = threading.Event()
        self.hold: threading.Event | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                outer.requested.set()
                if outer.hold is not None:
                    outer.hold.wait(30)
                body = json.dumps({"keys": outer.keys}).encode()
                if outer.status != 200:
                    body = b"<html>oops</html>"
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def add(self, kid: str, key: Any) -> None:
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            jwk["alg"] = "RS256"
        else:
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            jwk["alg"] = "ES256"
        jwk.update(kid=kid, use="sig")
        self.keys.append(jwk)

    def remove(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k["kid"] != kid]


@pytest.fixture(name="jwks")
def _jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    yield server
    if server.hold is not None:
        server.hold.set()
    server.httpd.shutdown()
    server.httpd.server_close()


def jwks_config(jwks: JwksServer, **more: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "require_auth": True,
        "algorithms": ["RS256", "ES256"],
        "jwks_url": jwks.url,
        "jwks_timeout": 5 * TIMEOUT_UNIT,
        "bypass_token": BYPASS,
        "lockout_failures": 100,
    }
    config.update(more)
    return config


def rs_token(kid: str | None, key: Any = RSA_KEY) -> dict[str, Any]:
    return with_token(mint(key=key, algorithm="RS256", kid=kid, aud=None))


def es_token(kid: str | None) -> dict[str, Any]:
    return with_token(mint(key=EC_KEY, algorithm="ES256", kid=kid, aud=None))


async def test_jwks_verifies_by_kid(make_gateway: MakeGateway, jwks: JwksServer) -> None:
    jwks.add("rsa-1", RSA_KEY)
    jwks.add("ec-1", EC_KEY)
    gw = await make_gateway(**jwks_config(jwks))
    store = new_store_id()
    assert_http_accepted(await http_ping(gw, store, payload=rs_token("rsa-1")))
    assert_http_accepted(await http_ping(gw, store, payload=es_token("ec-1")))
    # A known kid with someone else's signature, or the wrong key for the kid.
    for payload in (rs_token("rsa-1", OTHER_RSA_KEY), rs_token("ec-1"), es_token("rsa-1")):
        assert_error_body(await http_ping(gw, store, payload=payload), 401, "INVALID_TOKEN")
    assert jwks.fetches == 1  # cached


async def test_jwks_token_without_kid_tries_every_key(
    make_gateway: MakeGateway, jwks: JwksServer
) -> None:
    jwks.add("ec-1", EC_KEY)
    jwks.add("rsa-1", RSA_KEY)
    gw = await make_gateway(**jwks_config(jwks))
    store = new_store_id()
    assert_http_accepted(await http_ping(gw, store, payload=es_token(None)))
    assert_http_accepted(await http_ping(gw, store, payload=rs_token(None)))


async def test_jwks_key_rotation(make_gateway: MakeGateway, jwks: JwksServer) -> None:
    """An unknown kid triggers a refresh: a newly published key is accepted at once."""
    jwks.add("k1", RSA_KEY)
    gw = await make_gateway(**jwks_config(jwks, jwks_min_refresh_interval=0))
    store = new_store_id()
    assert_http_accepted(await http_ping(gw, store, payload=rs_token("k1")))
    assert jwks.fetches == 1
    jwks.add("k2", OTHER_RSA_KEY)
    assert_http_accepted(await http_ping(gw, store, payload=rs_token("k2", OTHER_RSA_KEY)))
    assert jwks.fetches == 2
    assert_http_accepted(await http_ping(gw, store, payload=rs_token("k1")))
    assert jwks.fetches == 2
    # A retired key is gone after the next refresh.
    jwks.remove("k1")
    assert_error_body(await http_ping(gw, store, payload=rs_token("k3")), 401, "INVALID_TOKEN")
    assert jwks.fetches == 3
    assert_error_body(await http_ping(gw, store, payload=rs_token("k1")), 401, "INVALID_TOKEN")


async def test_jwks_refresh_is_rate_limited(make_gateway: MakeGateway, jwks: JwksServer) -> None:
    """Unknown kids cannot make the gateway hammer the JWKS endpoint."""
    jwks.add("k1", RSA_KEY)
    gw = await make_gateway(**jwks_config(jwks, jwks_min_refresh_interval=60))
    store = new_store_id()
    assert_http_accepted(await http_ping(gw, store, payload=rs_token("k1")))
    jwks.add("k2", OTHER_RSA_KEY)
    for i in range(5):
        result = await http_ping(gw, store, payload=rs_token(f"unknown-{i}"))
        assert_error_body(result, 401, "INVALID_TOKEN")
    # Even the new key waits for the refresh interval.
    assert_error_body(
        await http_ping(gw, store, payload=rs_token("k2", OTHER_RSA_KEY)), 401, "INVALID_TOKEN"
    )
    assert jwks.fetches == 1


async def test_jwks_cache_refresh_schedule(jwks: JwksServer) -> None:
    """JwksCache with an injected clock: refresh interval and TTL, against a real server."""
    jwks.add("k1", RSA_KEY)
    now = [1000.0]
    cache = JwksCache(
        jwks.url, timeout=5 * TIMEOUT_UNIT, min_refresh_interval=60, ttl=3600, clock=lambda: now[0]
    )
    assert len(await cache.keys_for("k1")) == 1
    assert jwks.fetches == 1
    jwks.add("k2", OTHER_RSA_KEY)
    now[0] += 30
    assert await cache.keys_for("k2") == []  # within the refresh interval
    assert jwks.fetches == 1
    now[0] += 31
    assert len(await cache.keys_for("k2")) == 1  # interval passed: refreshed
    assert jwks.fetches == 2
    assert len(await cache.keys_for(None)) == 2
    now[0] += 3601
    assert len(await cache.keys_for("k1")) == 1  # TTL passed: refreshed though kid known
    assert jwks.fetches == 3
    assert cache.fetches == 3


async def test_jwks_server_down(make_gateway: MakeGateway, ws: Opener) -> None:
    """An unreachable JWKS endpoint: tokens are refused 401, the gateway keeps serving."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks.json"
    gw = await make_gateway(
        require_auth=True,
        algorithms=["RS256"],
        jwks_url=url,
        bypass_token=BYPASS,
        jwks_min_refresh_interval=0,
    )
    store = new_store_id()
    for _ in range(2):
        assert_error_body(await http_ping(gw, store, payload=rs_token("k1")), 401, "INVALID_TOKEN")
    assert_error_body(
        await ws_refused(gw.ws_url(store, payload=rs_token("k1"))), 401, "INVALID_TOKEN"
    )
    client = await ws(gw.ws_url(store, payload=bypass()), store, payload=bypass())
    await client.push_ok(make_events(1, 1))
    health = await http_request("GET", f"http://{gw.base}/healthz")
    assert health.status == 200
    assert gw.gw.auth.jwks is not None
    assert gw.gw.auth.jwks.fetches == 3


async def test_jwks_errors_keep_the_old_keys(make_gateway: MakeGateway, jwks: JwksServer) -> None:
    jwks.add("k1", RSA_KEY)
    gw = await make_gateway(**jwks_config(jwks, jwks_min_refresh_interval=0))
    store = new_store_id()
    assert_http_accepted(await http_ping(gw, store, payload=rs_token("k1")))
    jwks.status = 500
    assert_error_body(await http_ping(gw, store, payload=rs_token("k9")), 401, "INVALID_TOKEN")
    assert jwks.fetches == 2
    assert_http_accepted(await http_ping(gw, store, payload=rs_token("k1")))


async def test_jwks_fetch_runs_off_the_event_loop(
    make_gateway: MakeGateway, ws: Opener, jwks: JwksServer
) -> None:
    """While a JWKS fetch hangs, other clients are served; the token is then verified."""
    jwks.add("k1", RSA_KEY)
    jwks.hold = threading.Event()
    gw = await make_gateway(**jwks_config(jwks))
    store = new_store_id()
    pending = asyncio.ensure_future(http_ping(gw, store, payload=rs_token("k1")))
    try:
        assert await asyncio.to_thread(jwks.requested.wait, 5 * TIMEOUT_UNIT)
        client = await ws(gw.ws_url(store, payload=bypass()), store, payload=bypass())
        await client.push_ok(make_events(1, 1))
        assert_http_accepted(await http_ping(gw, store, payload=bypass()))
        assert not pending.done()
    finally:
        jwks.hold.set()
    assert_http_accepted(await asyncio.wait_for(pending, 5 * TIMEOUT_UNIT))


async def test_jwks_timeout(make_gateway: MakeGateway, jwks: JwksServer) -> None:
    """A JWKS endpoint that never answers costs at most jwks_timeout, then a 401."""
    jwks.add("k1", RSA_KEY)
    jwks.hold = threading.Event()
    gw = await make_gateway(**jwks_config(jwks, jwks_timeout=0.3))
    result = await http_ping(gw, new_store_id(), payload=rs_token("k1"))
    assert_error_body(result, 401, "INVALID_TOKEN")


# ---------------------------------------------------------------------------------------------
# Startup validation and configuration


PROD = {"REQUIRE_AUTH": "true"}


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "auth.jwt_secret"),
        ({"JWT_SECRET": "s" * 31}, "auth.jwt_secret"),
        ({"JWT_SECRET": "é" * 15}, "auth.jwt_secret"),  # 30 bytes
        ({"JWT_SECRET": SECRET, "SERVER_BYPASS_TOKEN": "b" * 31}, "auth.bypass_token"),
        ({"JWT_SECRET": SECRET, "SERVER_BYPASS_TOKEN": "b" * 31}, "SERVER_BYPASS_TOKEN"),
        ({"JWT_SECRET": SECRET, "JWT_PREVIOUS_SECRET": "old"}, "auth.jwt_previous_secret"),
        ({"GATEWAY_AUTH_ALGORITHMS": "RS256"}, "auth.jwt_secret"),
        (
            {"JWT_SECRET": SECRET, "GATEWAY_AUTH_ALGORITHMS": "RS256"},
            "auth.public_key_files",
        ),
        ({"JWT_SECRET": SECRET, "GATEWAY_AUTH_ALGORITHMS": "none"}, "auth.algorithms"),
        ({"JWT_SECRET": SECRET, "GATEWAY_AUTH_JWKS_URL": "file:///etc/x"}, "auth.jwks_url"),
        ({"JWT_SECRET": SECRET, "AUTH_GRACE_PERIOD": "-1"}, "auth.grace_period"),
        ({"JWT_SECRET": SECRET, "AUTH_GRACE_PERIOD": "soon"}, "AUTH_GRACE_PERIOD"),
    ],
)
def test_startup_refuses_insecure_production_config(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config(None, {**PROD, **env})


def test_require_auth_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="REQUIRE_AUTH"):
        build_config(None, {"REQUIRE_AUTH": "maybe"})


def test_development_allows_short_secrets() -> None:
    config = build_config(None, {"JWT_SECRET": "short", "SERVER_BYPASS_TOKEN": "b"})
    assert config.auth.jwt_secret == "short"
    assert not config.auth.require_auth


def test_seed_env_names_work_as_is() -> None:
    env = {
        "REQUIRE_AUTH": "true",
        "JWT_SECRET": SECRET,
        "SERVER_BYPASS_TOKEN": BYPASS,
        "AUTH_GRACE_PERIOD": "1h",
    }
    config = load_config(None, env=env)
    assert config.auth.require_auth is True
    assert config.auth.jwt_secret == SECRET
    assert config.auth.bypass_token == BYPASS
    assert config.auth.grace_period == 3600.0


@pytest.mark.parametrize(
    ("value", "seconds"), [("1h", 3600.0), ("90m", 5400.0), ("0", 0.0), ("2d", 172800.0)]
)
def test_grace_period_durations(value: str, seconds: float) -> None:
    config = build_config(None, {"AUTH_GRACE_PERIOD": value})
    assert config.auth.grace_period == seconds


def test_env_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[auth]\nrequire_auth = false\ngrace_period = 60\njwt_secret = "file"\n')
    config = load_config(path, env={**PROD, "JWT_SECRET": SECRET, "AUTH_GRACE_PERIOD": "2h"})
    assert config.auth.require_auth
    assert config.auth.jwt_secret == SECRET
    assert config.auth.grace_period == 7200.0


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text(SECRET + "\n")
    (tmp_path / "bypass").write_text(BYPASS + "\n")
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[auth]\nrequire_auth = true\njwt_secret_file = "{tmp_path / "jwt"}"\n'
        f'bypass_token_file = "{tmp_path / "bypass"}"\n'
    )
    config = load_config(path, env={})
    assert config.auth.jwt_secret == SECRET
    assert config.auth.bypass_token == BYPASS


def test_secret_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[auth]\njwt_secret_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match=r"auth\.jwt_secret_file"):
        load_config(path, env={})
    # A short secret from a file is as unacceptable in production as one inline.
    (tmp_path / "short").write_text("tiny\n")
    path.write_text(f'[auth]\nrequire_auth = true\njwt_secret_file = "{tmp_path / "short"}"\n')
    with pytest.raises(ConfigError, match=r"auth\.jwt_secret"):
        load_config(path, env={})


def test_secrets_from_credentials_directory(tmp_path: Path) -> None:
    """systemd LoadCredential=: $CREDENTIALS_DIRECTORY/jwt_secret and /bypass_token."""
    (tmp_path / "jwt_secret").write_text(SECRET + "\n")
    (tmp_path / "bypass_token").write_text(BYPASS)
    env = {**PROD, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    config = load_config(None, env=env)
    assert config.auth.jwt_secret == SECRET
    assert config.auth.bypass_token == BYPASS
    # An explicit value wins over the credential.
    config = load_config(None, env={**env, "JWT_SECRET": OTHER_SECRET})
    assert config.auth.jwt_secret == OTHER_SECRET


async def test_cli_refuses_production_without_a_key(tmp_path: Path) -> None:
    code, _, stderr = await run_cli(
        "serve", "--port", "0", "--data-dir", str(tmp_path), env={"REQUIRE_AUTH": "true"}
    )
    assert code == 2
    assert "auth.jwt_secret" in stderr
    code, _, stderr = await run_cli(
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path),
        env={"REQUIRE_AUTH": "1", "JWT_SECRET": SECRET, "SERVER_BYPASS_TOKEN": "short"},
    )
    assert code == 2
    assert "SERVER_BYPASS_TOKEN" in stderr


async def test_cli_unreadable_public_key_is_a_configuration_error(tmp_path: Path) -> None:
    """Like every other bad setting: exit 2 with a message naming it, no traceback."""
    path = tmp_path / "gateway.toml"
    missing = tmp_path / "missing.pem"
    path.write_text(
        f'[auth]\nrequire_auth = true\nalgorithms = ["RS256"]\npublic_key_files = ["{missing}"]\n'
    )
    code, _, stderr = await run_cli(
        "serve", "--config", str(path), "--port", "0", "--data-dir", str(tmp_path)
    )
    assert "auth.public_key_files" in stderr
    assert "Traceback" not in stderr
    assert code == 2


# ---------------------------------------------------------------------------------------------
# Tokens never reach the logs


@pytest.mark.parametrize(
    "websockets_level",
    [
        pytest.param(logging.WARNING, id="websockets-logger-as-gateway-serve-sets-it"),
        pytest.param(logging.DEBUG, id="websockets-logger-at-debug"),
    ],
)
async def test_tokens_never_logged(
    make_gateway: MakeGateway,
    ws: Opener,
    caplog: pytest.LogCaptureFixture,
    websockets_level: int,
) -> None:
    """Every gateway logger at DEBUG over refused and accepted connections: no record
    contains a token or bypass secret, and the refused/accepted lines carry fingerprints.
    (test_tokens_never_logged_by_the_real_process checks the whole ``gateway serve``.)"""
    # (In this order: set_level also sets the capturing handler's level.)
    caplog.set_level(websockets_level, logger="gateway.websockets")
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(**auth_config(require_auth=True), cookie_name="sess", **COOKIE_SAFE)
    store = new_store_id()
    accepted_payload = mint(sub="p-ok")
    accepted_query = mint(sub="q-ok")
    accepted_header = mint(sub="h-ok")
    graced = mint(sub="g-ok", ttl=-60)
    refused_payload = mint(sub="p-bad", key=OTHER_SECRET)
    refused_query = mint(sub="q-bad", key=OTHER_SECRET)
    refused_http = mint(sub="http-bad", key=OTHER_SECRET)
    wrong_bypass = secrets.token_urlsafe(32)
    instance = {"instanceId": "device-1"}

    header = {"Authorization": f"Bearer {accepted_header}"}
    for url, headers in (
        (gw.ws_url(store, payload=with_token(accepted_payload)), None),
        (gw.ws_url(store, payload=with_token(graced)), None),
        (with_query_token(gw.ws_url(store, payload=instance), accepted_query), None),
        (gw.ws_url(store, payload=instance), header),
    ):
        client = await ws(url, store, headers=headers)
        await client.barrier()  # the session is running, so its "open" line is written
        await client.close()
    await ws_refused(gw.ws_url(store, payload=with_token(refused_payload)))
    await ws_refused(with_query_token(gw.ws_url(store, payload=instance), refused_query))
    result = await http_ping(gw, store, payload=instance, token=refused_http)
    assert result.status == 401
    await ws_refused(gw.ws_url(store, payload=bypass(wrong_bypass)))

    tokens = [
        accepted_payload,
        accepted_query,
        accepted_header,
        graced,
        refused_payload,
        refused_query,
        refused_http,
        wrong_bypass,
    ]
    texts = []
    for record in caplog.records:
        if not record.name.startswith("gateway"):
            continue  # the test's own websockets client logs what it sends
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            text += logging.Formatter().formatException(record.exc_info)
        texts.append(text + (record.exc_text or "") + repr(record.args))
    everything = "\n".join(texts)
    assert texts, "nothing was logged"
    for secret in [*tokens, BYPASS, SECRET]:
        assert secret not in everything
        # Not even a recognisable piece of it (the signature part of a JWT).
        assert secret[-20:] not in everything
    for token in tokens:
        assert auth.fingerprint(token) in everything, token[:10]


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_tokens_never_logged_by_the_real_process(tmp_path: Path, log_format: str) -> None:
    """``gateway serve`` at log level debug: a token in the payload, in ?token= and in a
    header never appears on its stderr; its fingerprint does."""
    token = mint()
    bad = mint(key=OTHER_SECRET)
    env = {
        "REQUIRE_AUTH": "true",
        "JWT_SECRET": SECRET,
        "GATEWAY_AUTH_AUDIENCE": AUDIENCE,
        "GATEWAY_LOG_LEVEL": "debug",
        "GATEWAY_LOG_FORMAT": log_format,
    }
    daemon = await Daemon.start(
        "--port", "0", "--data-dir", str(tmp_path), env=env, within=15 * TIMEOUT_UNIT
    )
    try:
        base = f"ws://127.0.0.1:{daemon.port}/?"
        payload = with_token(token)
        client = await RpcClient.open(base + sync_query("s", payload=payload), "s", payload=payload)
        await client.push_ok(make_events(1, 1))
        await client.close()
        instance = {"instanceId": "i"}
        url = with_query_token(base + sync_query("s", payload=instance), token)
        header = {"Authorization": f"Bearer {bad}"}
        client = await RpcClient.open(url, "s", additional_headers=header)
        await client.close()
        await ws_refused(with_query_token(base + sync_query("s", payload=instance), bad))
        await ws_refused(base + sync_query("s", payload=instance), header)
    finally:
        await daemon.terminate(10 * TIMEOUT_UNIT)
    stderr = daemon.text
    for secret in (token, bad, SECRET):
        assert secret not in stderr
        assert secret[-20:] not in stderr
    assert auth.fingerprint(token) in stderr
    assert auth.fingerprint(bad) in stderr


# ---------------------------------------------------------------------------------------------
# gateway token mint / decode


async def run_token(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_cli("token", *args, env=env)


async def test_token_mint_is_accepted_by_the_gateway(
    make_gateway: MakeGateway, ws: Opener, tmp_path: Path
) -> None:
    """`gateway token mint` signs with the configured secret and claims; the gateway
    configured the same way accepts the token, for the minted stores only."""
    settings = {
        "require_auth": True,
        "jwt_secret": SECRET,
        "audience": AUDIENCE,
        "issuer": ISSUER,
        "required_type": "access",
        "stores_claim": "stores",
    }
    config = write_toml(tmp_path / "gateway.toml", {"auth": settings})
    code, stdout, stderr = await run_token(
        "mint",
        "--config",
        str(config),
        "--sub",
        "bob",
        "--ttl",
        "1h",
        "--stores",
        "app-*,exact",
        "--claim",
        "role=admin",
        "--claim",
        "level=5",
        "--claim",
        "beta=true",
    )
    assert code == 0, stderr
    token = stdout.strip()
    assert token.count(".") == 2, stdout
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "bob"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60
    assert claims["type"] == "access"
    assert claims["stores"] == ["app-*", "exact"]
    assert (claims["role"], claims["level"], claims["beta"]) == ("admin", 5, True)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"

    gw = await make_gateway(**settings)
    payload = with_token(token)
    await ws(gw.ws_url("app-1", payload=payload), "app-1", payload=payload)
    assert_error_body(await ws_refused(gw.ws_url("other", payload=payload)), 403, "STORE_FORBIDDEN")


async def test_token_mint_uses_env_and_subject_claim(tmp_path: Path) -> None:
    """JWT_SECRET from the environment works as-is; a custom subject claim is honoured."""
    config = write_toml(tmp_path / "gateway.toml", {"auth": {"subject_claim": "userId"}})
    code, stdout, stderr = await run_token(
        "mint", "--config", str(config), "--sub", "u-42", "--ttl", "90s", env={"JWT_SECRET": SECRET}
    )
    assert code == 0, stderr
    claims = jwt.decode(stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["userId"] == "u-42"
    assert claims["exp"] - claims["iat"] == 90


async def test_token_mint_rs256_with_private_key(
    make_gateway: MakeGateway, ws: Opener, tmp_path: Path, rsa_pem_file: str
) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        RSA_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = {"require_auth": True, "algorithms": ["RS256"], "public_key_files": [rsa_pem_file]}
    config = write_toml(tmp_path / "gateway.toml", {"auth": settings})
    code, stdout, stderr = await run_token(
        "mint", "--config", str(config), "--sub", "svc", "--private-key", str(private)
    )
    assert code == 0, stderr
    token = stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    gw = await make_gateway(**settings)
    store = new_store_id()
    await ws(gw.ws_url(store, payload=with_token(token)), store)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("--sub", "x"), {}, "jwt_secret"),
        (("--sub", "x", "--ttl", "soon"), {"JWT_SECRET": SECRET}, "--ttl"),
        (("--sub", "x", "--claim", "novalue"), {"JWT_SECRET": SECRET}, "--claim"),
        (("--sub", "x"), {"REQUIRE_AUTH": "true", "JWT_SECRET": "short"}, "auth.jwt_secret"),
    ],
)
async def test_token_mint_errors(args: tuple[str, ...], env: dict[str, str], needle: str) -> None:
    code, stdout, stderr = await run_token("mint", *args, env=env)
    assert code == 2
    assert needle in stderr
    assert stdout == ""


async def test_token_decode_without_verifying() -> None:
    """decode shows header and claims of any JWT, even expired or signed by an unknown key,
    and needs no configuration (a broken one does not stop it)."""
    token = mint(sub="carol", ttl=-DAY, key=OTHER_RSA_KEY, algorithm="RS256", kid="k-9", role="x")
    code, stdout, stderr = await run_token("decode", token, env={"REQUIRE_AUTH": "true"})
    assert code == 0, stderr
    shown = json.loads(stdout)
    assert shown["header"] == {"alg": "RS256", "typ": "JWT", "kid": "k-9"}
    assert shown["claims"]["sub"] == "carol"
    assert shown["claims"]["role"] == "x"
    assert shown["claims"]["aud"] == AUDIENCE
    assert shown["verified"] is False
    assert shown["expires_in_seconds"] < 0


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", "x" * 5000])
async def test_token_decode_garbage(garbage: str) -> None:
    code, stdout, stderr = await run_token("decode", garbage)
    assert code != 0
    assert stdout == ""
    assert stderr.strip()
    assert "Traceback" not in stderr


def test_pem_looking_hmac_secret_is_refused_at_load() -> None:
    """A public key pasted as JWT_SECRET is refused once, at load (not on every token)."""
    with pytest.raises(ConfigError, match=r"auth\.jwt_secret"):
        AuthGate(make_config(jwt_secret=RSA_PUBLIC_PEM.decode()).auth)
