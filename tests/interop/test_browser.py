"""Interop in a real browser: a LiveStore 0.4.0 web app in headless Chromium against the gateway.

The app (``browser/app.js``) is an ordinary LiveStore 0.4.0 app: ``@livestore/adapter-web``'s
in-memory adapter, synced through the real ``makeWsSync`` or ``makeHttpSync`` of
``@livestore/sync-cf`` 0.4.0 with the browser's own ``WebSocket`` and ``fetch`` (so every request
carries the page's ``Origin``, and a cross-origin ``fetch`` goes through a CORS preflight). The
schema is ``client.mjs``'s, so the page, Node clients and raw ``RpcClient``s share one store.

``browser/build.mjs`` bundles it with esbuild once per module; a stdlib HTTP server in a thread
serves the bundle on 127.0.0.1 port 0 (a second one on another port is a foreign origin); the
gateway is a ``gateway serve`` subprocess on 127.0.0.1 port 0 (another origin again, as in a real
deployment). ``browser/driver.mjs`` runs Debian's Chromium through playwright-core and answers
JSON-line commands: it opens pages, calls the app through ``page.evaluate`` and reports what each
page sent and got on the network (from the DevTools protocol: request headers, statuses, CORS
preflights, refused handshakes). Nothing here sleeps to synchronise: every wait is on a reply or an
observed request, with a timeout.

Needs ``node`` (20+), ``npm ci`` in tests/interop and tests/interop/browser, and Chromium
(``chromium`` on PATH, or ``INTEROP_CHROMIUM``); ``make install-node`` installs all three.
Without them the tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.helpers.ci import skip_or_fail
from tests.helpers.clients import RpcClient
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.urls import sync_url
from tests.helpers.wire import events_of, new_store_id
from tests.interop.test_interop import (
    INTEROP_DIR,
    GatewayProcess,
    NodeClient,
    _running_gateway,
    assert_consistent,
    assert_same,
    event_ids,
    ids,
    spawn_node,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

BROWSER_DIR = INTEROP_DIR / "browser"
DRIVER = BROWSER_DIR / "driver.mjs"
BUILD = BROWSER_DIR / "build.mjs"
# Debian's Chromium (`make install-node` installs it); INTEROP_CHROMIUM names another binary.
CHROMIUM = os.environ.get("INTEROP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
UNIT = TIMEOUT_UNIT


def _prerequisites_problem() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH"
    modules = BROWSER_DIR / "node_modules"
    for package in ("playwright-core", "esbuild", "@livestore/adapter-web"):
        if not (modules / package / "package.json").is_file():
            return f"tests/interop/browser/node_modules lacks {package} (run `make install-node`)"
    if not (INTEROP_DIR / "node_modules" / "@livestore" / "sync-cf").is_dir():
        return "tests/interop/node_modules is missing (run `make install-node`)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (`make install-node` installs Debian's chromium)"
    return None


@pytest.fixture(name="app_dir", scope="module")
def _app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled app (index.html, app.js, wa-sqlite.wasm), built once per module."""
    problem = _prerequisites_problem()
    if problem is not None:
        skip_or_fail(problem, ci_prefix="browser interop prerequisites missing under CI: ")
    outdir = tmp_path_factory.mktemp("browser-app")
    built = subprocess.run(
        ["node", str(BUILD), str(outdir)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert built.returncode == 0, f"build.mjs failed:\n{built.stdout}\n{built.stderr}"
    assert (outdir / "app.js").is_file()
    return outdir


# ---------------------------------------------------------------------------------------------
# The static site (the app's origin)


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 (the stdlib's own class attribute, replaced as a whole)
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Site:
    """The bundled app, served from a thread by ``http.server`` on 127.0.0.1 port 0."""

    def __init__(self, root: Path) -> None:
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def origin(self) -> str:
        """What the browser sends as ``Origin`` from this site's pages."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def page_url(self, *, sync: str, store: str, client: str, transport: str = "ws") -> str:
        query = urlencode(
            {"sync": sync, "store": store, "client": client, "transport": transport, "poll": "300"}
        )
        return f"{self.origin}/index.html?{query}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def _serving(root: Path) -> Iterator[Site]:
    site = Site(root)
    try:
        yield site
    finally:
        site.close()


@pytest.fixture(name="site")
def _site(app_dir: Path) -> Iterator[Site]:
    """The app's own origin."""
    with _serving(app_dir) as site:
        yield site


@pytest.fixture(name="other_site")
def _other_site(app_dir: Path) -> Iterator[Site]:
    """The same app on another port: another origin (foreign, or a second allowed one)."""
    with _serving(app_dir) as site:
        yield site


# ---------------------------------------------------------------------------------------------
# The browser


class Browser(NodeClient):
    """One ``node driver.mjs`` process: headless Chromium, with pages named by the test."""

    @classmethod
    async def launch(cls) -> Browser:
        args = [str(DRIVER), "--chromium", CHROMIUM, "--max-lifetime", str(int(85 * UNIT))]
        browser = cls("chromium", await spawn_node(BROWSER_DIR, args, None))
        try:
            browser.ready_info = await browser._expect(
                lambda ev: ev.get("event") == "ready", 30, "ready"
            )
        except BaseException:
            await browser.kill()
            raise
        return browser

    async def open(self, name: str, url: str) -> BrowserPage:
        """Open ``url`` in a fresh context and wait until the app's store has booted."""
        page = BrowserPage(self, name)
        page.boot = await self.cmd("open", page=name, url=url, timeout=20 * UNIT)
        return page


@dataclass
class BrowserPage:
    browser: Browser
    name: str
    boot: dict[str, Any] | None = None

    async def _cmd(self, cmd: str, **params: Any) -> dict[str, Any]:
        return await self.browser.cmd(cmd, page=self.name, **params)

    async def commit(self, prefix: str, count: int, *, start: int = 1) -> None:
        reply = await self._cmd("commit", prefix=prefix, count=count, start=start)
        assert reply["committed"] == count

    async def wait_rows(self, rows: int, within: float = 20.0) -> dict[str, Any]:
        """Until ``rows`` rows are there, confirmed by the gateway, with nothing pending."""
        return await self._cmd("wait", rows=rows, timeout=within * UNIT)

    async def status(self) -> dict[str, Any]:
        return await self._cmd("status")

    async def dump(self) -> dict[str, Any]:
        return await self._cmd("dump")

    async def requests(self) -> list[dict[str, Any]]:
        """Every request the page made so far (see driver.mjs ``net``)."""
        reply = await self._cmd("net")
        requests: list[dict[str, Any]] = reply["requests"]
        return requests

    async def wait_requests(
        self,
        kind: str,
        *,
        status: int | None = None,
        method: str | None = None,
        count: int = 1,
        within: float = 20.0,
    ) -> list[dict[str, Any]]:
        """Until the page made ``count`` requests of ``kind`` answered with ``status``."""
        params: dict[str, Any] = {"kind": kind, "count": count, "timeout": within * UNIT}
        if status is not None:
            params["status"] = status
        if method is not None:
            params["method"] = method
        reply = await self._cmd("waitnet", **params)
        found: list[dict[str, Any]] = reply["requests"]
        return found


@pytest.fixture(name="browser")
async def _browser(app_dir: Path) -> AsyncIterator[Browser]:
    browser = await Browser.launch()
    try:
        yield browser
    finally:
        await browser.shutdown()


# ---------------------------------------------------------------------------------------------
# The gateway and its log


@contextlib.asynccontextmanager
async def _gateway(tmp_path: Path, **settings: str) -> AsyncIterator[GatewayProcess]:
    env = {f"GATEWAY_SERVER_{key.upper()}": value for key, value in settings.items()}
    async with _running_gateway(tmp_path / "gateway-data", env) as gw:
        yield gw


async def gateway_log(gw: GatewayProcess, store_id: str) -> list[dict[str, Any]]:
    """The store's events as the gateway serves them to a fresh raw client (no ``Origin``)."""
    client = await RpcClient.open(sync_url(f"{gw.host}:{gw.port}", store_id), store_id)
    try:
        return events_of(await client.pull())
    finally:
        await client.close()


async def rpc_push_todo(gw: GatewayProcess, store_id: str, seq: int, todo_id: str) -> None:
    """Append one ``v1.TodoCreated`` at ``seq`` as a raw client (a service, no ``Origin``)."""
    client = await RpcClient.open(sync_url(f"{gw.host}:{gw.port}", store_id), store_id)
    try:
        event = {
            "name": "v1.TodoCreated",
            "args": {"id": todo_id, "text": f"{todo_id} from rpc"},
            "seqNum": seq,
            "parentSeqNum": seq - 1,
            "clientId": "rpc-service",
            "sessionId": "rpc-session",
        }
        await client.push_ok([event], await client.backend_id())
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _node_client(
    gw: GatewayProcess, name: str, store_id: str, transport: str = "ws"
) -> AsyncIterator[NodeClient]:
    url = gw.ws_url() if transport == "ws" else gw.http_url()
    client = await NodeClient.start(name, url=url, store_id=store_id, transport=transport)
    try:
        yield client
    finally:
        await client.shutdown()


@pytest.fixture(name="store")
def _store() -> str:
    return new_store_id("browser")


# ---------------------------------------------------------------------------------------------
# Tests


async def test_browser_app_syncs_over_websocket(
    tmp_path: Path, site: Site, browser: Browser, store: str
) -> None:
    """The page's commits reach the gateway's log, a Node client and a raw client; a Node
    client's commits and a raw client's push reach the page; all end with the same eventlog."""
    async with _gateway(tmp_path) as gw, _node_client(gw, "node-N", store) as node:
        page = await browser.open(
            "A", site.page_url(sync=gw.ws_url(), store=store, client="browser-A")
        )
        await page.commit("B", 3)
        await page.wait_rows(3)

        sockets = await page.wait_requests("websocket", status=101)
        assert sockets[0]["requestHeaders"]["origin"] == site.origin
        assert sockets[0]["url"].startswith(gw.ws_url())

        log = await gateway_log(gw, store)
        assert [(ev["seqNum"], ev["args"]["id"], ev["clientId"]) for ev in log] == [
            (1, "B-1", "browser-A"),
            (2, "B-2", "browser-A"),
            (3, "B-3", "browser-A"),
        ]

        await node.wait_rows(3)
        await node.commit("N", 2)
        await node.wait_rows(5)
        await page.wait_rows(5)

        await rpc_push_todo(gw, store, 6, "R-1")
        await page.wait_rows(6)
        await node.wait_rows(6)

        in_page, in_node = await page.dump(), await node.dump()
        assert_same(in_page, in_node)
        assert event_ids(in_page) == [*ids("B", 1, 3), *ids("N", 1, 2), "R-1"]
        assert {"id": "R-1", "text": "R-1 from rpc"} in in_page["rows"]
        assert [ev["args"]["id"] for ev in await gateway_log(gw, store)] == event_ids(in_page)
        assert in_page["network"]["isConnected"] is True


async def test_browser_origin_allowlist(
    tmp_path: Path,
    site: Site,
    other_site: Site,
    browser: Browser,
    store: str,
) -> None:
    """With ``server.allowed_origins`` naming the app's origin, the page from that origin syncs;
    the same app from another origin is refused 403 on every handshake and never syncs."""
    async with _gateway(tmp_path, allowed_origins=site.origin) as gw:
        own = await browser.open(
            "own", site.page_url(sync=gw.ws_url(), store=store, client="browser-own")
        )
        await own.commit("O", 2)
        await own.wait_rows(2)
        accepted = await own.wait_requests("websocket", status=101)
        assert accepted[0]["requestHeaders"]["origin"] == site.origin

        foreign = await browser.open(
            "foreign", other_site.page_url(sync=gw.ws_url(), store=store, client="browser-evil")
        )
        await foreign.commit("F", 1)
        # LiveStore retries; wait for two refusals, so the retry was refused as well.
        refused = await foreign.wait_requests("websocket", status=403, count=2)
        assert {r["requestHeaders"]["origin"] for r in refused} == {other_site.origin}
        # None was let through (a retry still under way has no status yet).
        sockets = [r for r in await foreign.requests() if r["kind"] == "websocket"]
        assert all(r["status"] in (403, None) for r in sockets), sockets

        state = await foreign.dump()
        assert state["network"]["isConnected"] is False
        assert state["sync"] == {"upstreamHead": 0, "localHead": 1, "pending": 1}
        assert [row["id"] for row in state["rows"]] == ["F-1"]

        # Nothing of the foreign page reached the store, while the own page goes on syncing.
        await own.commit("O", 1, start=3)
        await own.wait_rows(3)
        in_own = await own.dump()
        assert_consistent(in_own, "own page")
        assert event_ids(in_own) == ids("O", 1, 3)
        assert [ev["args"]["id"] for ev in await gateway_log(gw, store)] == ids("O", 1, 3)


async def test_browser_app_syncs_over_http(
    tmp_path: Path,
    site: Site,
    other_site: Site,
    browser: Browser,
    store: str,
) -> None:
    """``makeHttpSync`` from a page on another origin: the gateway answers the CORS preflight,
    the page's pushes reach the log and a Node client, the Node client's events reach the page
    by polling; a foreign origin's preflight is refused and that page never syncs."""
    async with (
        _gateway(tmp_path, allowed_origins=site.origin, cors_allow_origin=site.origin) as gw,
        _node_client(gw, "node-N", store) as node,
    ):
        page = await browser.open(
            "A",
            site.page_url(sync=gw.http_url(), store=store, client="browser-H", transport="http"),
        )
        await page.commit("H", 3)
        await page.wait_rows(3)

        (preflight, *_) = await page.wait_requests("preflight", status=204)
        asked = preflight["requestHeaders"]
        assert asked["origin"] == site.origin
        assert asked["access-control-request-method"] == "POST"
        answer = preflight["responseHeaders"]
        assert answer["access-control-allow-origin"] == site.origin
        assert "POST" in answer["access-control-allow-methods"]
        wanted = {h.strip() for h in asked["access-control-request-headers"].split(",")}
        allowed = {h.strip() for h in answer["access-control-allow-headers"].split(",")}
        assert "content-type" in wanted
        assert wanted <= allowed
        posts = await page.wait_requests("fetch", method="POST", status=200)
        for post in posts:
            assert post["responseHeaders"]["access-control-allow-origin"] == site.origin, post

        log = await gateway_log(gw, store)
        assert [(ev["args"]["id"], ev["clientId"]) for ev in log] == [
            ("H-1", "browser-H"),
            ("H-2", "browser-H"),
            ("H-3", "browser-H"),
        ]
        await node.wait_rows(3)
        await node.commit("N", 2)
        await page.wait_rows(5)
        await node.wait_rows(5)
        assert_same(await page.dump(), await node.dump())

        foreign = await browser.open(
            "foreign",
            other_site.page_url(
                sync=gw.http_url(), store=store, client="browser-evil", transport="http"
            ),
        )
        await foreign.commit("F", 1)
        refused = await foreign.wait_requests("preflight", status=403, count=2)
        assert {r["requestHeaders"]["origin"] for r in refused} == {other_site.origin}
        # The browser never sent a POST itself: the refused preflight stopped each one.
        posts = [
            r
            for r in await foreign.requests()
            if r["kind"] == "fetch" and r["url"].startswith(gw.http_url())
        ]
        for post in posts:
            assert post["status"] is None, post
        failed = [post for post in posts if post["corsError"] is not None]
        assert failed, posts
        for post in failed:
            assert post["corsError"].startswith("Preflight"), post
        state = await foreign.dump()
        assert state["sync"] == {"upstreamHead": 0, "localHead": 1, "pending": 1}
        assert [ev["args"]["id"] for ev in await gateway_log(gw, store)] == event_ids(
            await page.dump()
        )


async def test_browser_http_from_a_second_allowed_origin(
    tmp_path: Path, site: Site, other_site: Site, browser: Browser, store: str
) -> None:
    """With two allowed origins and ``cors_allow_origin`` naming the first, a page from the
    second syncs over HTTP too: its preflight gets its own origin back."""
    allowed = f"{site.origin},{other_site.origin}"
    async with _gateway(tmp_path, allowed_origins=allowed, cors_allow_origin=site.origin) as gw:
        page = await browser.open(
            "second",
            other_site.page_url(
                sync=gw.http_url(), store=store, client="browser-2", transport="http"
            ),
        )
        await page.commit("S", 2)
        await page.wait_rows(2)
        (preflight, *_) = await page.wait_requests("preflight", status=204)
        assert preflight["requestHeaders"]["origin"] == other_site.origin
        answer = preflight["responseHeaders"]
        assert answer["access-control-allow-origin"] == other_site.origin
        assert answer["vary"] == "Origin"
        log = await gateway_log(gw, store)
        assert [ev["args"]["id"] for ev in log] == ids("S", 1, 2)


async def test_browser_http_transport_with_default_cors(
    tmp_path: Path, site: Site, browser: Browser, store: str
) -> None:
    """Out of the box (``cors_allow_origin = "*"``, no allowlist) the HTTP transport works
    from a page on another origin."""
    async with _gateway(tmp_path) as gw:
        page = await browser.open(
            "A",
            site.page_url(sync=gw.http_url(), store=store, client="browser-H", transport="http"),
        )
        await page.commit("H", 2)
        await page.wait_rows(2)
        (preflight, *_) = await page.wait_requests("preflight", status=204)
        assert preflight["requestHeaders"]["origin"] == site.origin
        assert preflight["responseHeaders"]["access-control-allow-origin"] == "*"
        log = await gateway_log(gw, store)
        assert [(ev["args"]["id"], ev["clientId"]) for ev in log] == [
            ("H-1", "browser-H"),
            ("H-2", "browser-H"),
        ]


async def test_browser_waits_fail_when_the_gateway_is_gone(
    tmp_path: Path, site: Site, browser: Browser, store: str
) -> None:
    """Control: with the gateway stopped, the page's commit stays pending and ``wait_rows``
    fails, so the waits above prove that the gateway synced."""
    async with _gateway(tmp_path) as gw:
        url = gw.ws_url()
    page = await browser.open("A", site.page_url(sync=url, store=store, client="browser-A"))
    await page.commit("B", 1)
    with pytest.raises(AssertionError, match="timeout after"):
        await page.wait_rows(1, within=2.0)
    state = await page.status()
    assert state["sync"]["pending"] == 1
    assert state["network"]["isConnected"] is False
