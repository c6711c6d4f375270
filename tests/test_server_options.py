"""sync-cf's server options as gateway configuration: ``server.transports``
(enabledTransports), ``server.response_headers`` (http.responseHeaders) and
``server.forward_headers`` (forwardHeaders)."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

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


async def test_websocket_transport_can_be_turned_off(make_gateway: MakeGateway) -> None:
    """With transports = ["http"], a WebSocket handshake is refused 404 TRANSPORT_DISABLED
    and the HTTP transport still answers."""
    gw = await make_gateway(transports=("http",))
    store = new_store_id()
    with pytest.raises(InvalidStatus) as refused:
        await RpcClient.open(gw.ws_url(store), store)
    assert_error_body(refusal_of(refused.value), 404, "TRANSPORT_DISABLED")
    ping = request_frame("0", HTTP_PING, {"storeId": store})
    assert (await http_post_json(gw.http_url(store), ping)).status == 200


async def test_http_transport_can_be_turned_off(make_gateway: MakeGateway) -> None:
    """With transports = ["ws"], an HTTP-transport POST is refused 404 TRANSPORT_DISABLED
    and WebSocket sessions still open."""
    gw = await make_gateway(transports=("ws",))
    store = new_store_id()
    ping = request_frame("0", HTTP_PING, {"storeId": store})
    assert_error_body(await http_post_json(gw.http_url(store), ping), 404, "TRANSPORT_DISABLED")
    client = await RpcClient.open(gw.ws_url(store), store)
    await client.close()


async def test_response_headers_on_every_http_transport_answer(make_gateway: MakeGateway) -> None:
    """Configured response headers are on the HTTP transport's answers: a success, a
    refusal and a CORS preflight."""
    gw = await make_gateway(response_headers={"X-Deployment": "eu-1", "Cache-Control": "no-store"})
    store = new_store_id()
    url = gw.http_url(store)
    ok = await http_post_json(url, request_frame("0", HTTP_PING, {"storeId": store}))
    refused = await http_request("PUT", url)
    preflight = await http_request("OPTIONS", url)
    for answer in (ok, refused, preflight):
        assert answer.headers["x-deployment"] == "eu-1", answer.headers
        assert answer.headers["cache-control"] == "no-store", answer.headers
    assert (ok.status, refused.status, preflight.status) == (200, 405, 204)


async def test_forwarded_headers_stay_with_the_session(make_gateway: MakeGateway) -> None:
    """A header named in forward_headers is kept with the open session (for the re-check
    after a reload and for push rules); other non-credential headers are not."""
    gw = await make_gateway(forward_headers=("X-Tenant",))
    store = new_store_id()
    client = await RpcClient.open(
        gw.ws_url(store), store, additional_headers={"X-Tenant": "acme", "X-Other": "no"}
    )
    try:
        (connection,) = gw.gw.sessions.sessions()
        headers = connection.admitted.context.headers  # type: ignore[attr-defined]
        assert headers.get("x-tenant") == "acme"
        assert "x-other" not in headers
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"response_headers": {"Connection": "x"}}, "set by the server"),
        ({"response_headers": {"X-A": "a\r\nb"}}, "no CR, LF"),
        ({"response_headers": {"Bad Name": "x"}}, "not a header name"),
        ({"transports": []}, "server.transports"),
        ({"transports": ["ws", "smoke"]}, "server.transports"),
        ({"forward_headers": ["x y"]}, "not a header name"),
    ],
)
def test_invalid_options_name_the_key(section: dict[str, object], message: str) -> None:
    """Header injection, hop-by-hop names and unknown transports are configuration errors."""
    with pytest.raises(ConfigError, match=message):
        build_config({"server": section}, {})
