"""gateway.client's ``token_provider`` against a real gateway that verifies JWTs: a token per
connect, a fresh one after the server closes an expired session (4001; over HTTP, a request
answered 401 TOKEN_EXPIRED), one more try after a refused handshake, and what happens without
a provider."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import pytest

from gateway.client import ConnectionClosed, Refused, StoreClient, connect
from tests.helpers.harness import GatewayHarness, MakeGateway
from tests.helpers.keys import BYPASS, SECRET, make_jwt
from tests.helpers.timeouts import TIMEOUT_UNIT, wait_for_event
from tests.helpers.wire import new_store_id

WITHIN = 10 * TIMEOUT_UNIT
# Long enough to open a session and read from it, short enough for the server's expiry
# sweep to close it within a few seconds.
SHORT_TTL = 1.5


async def jwt_gateway(make_gateway: MakeGateway) -> GatewayHarness:
    """A production-mode gateway (REQUIRE_AUTH) with no grace period: a session ends at its
    token's ``exp``, closed 4001."""
    return await make_gateway(
        require_auth=True, jwt_secret=SECRET, bypass_token=BYPASS, grace_period=0, leeway=0
    )


def client(gateway: GatewayHarness, store_id: str, **kwargs: Any) -> StoreClient:
    return connect(f"ws://{gateway.base}", store_id, backoff_base=0.05, **kwargs)


def http_client(gateway: GatewayHarness, store_id: str, **kwargs: Any) -> StoreClient:
    return connect(
        f"http://{gateway.base}",
        store_id,
        transport="http",
        backoff_base=0.05,
        poll_interval=0.05,
        **kwargs,
    )


class Provider:
    """A token provider that records its calls; ``tokens(n)`` is the token of the n-th call
    (0-based). ``called[n]`` is set when call n happened."""

    def __init__(self, tokens: Callable[[int], str], *, asynchronous: bool = True) -> None:
        self.tokens = tokens
        self.calls = 0
        self.called = [asyncio.Event() for _ in range(8)]
        self.asynchronous = asynchronous

    def _next(self) -> str:
        n = self.calls
        self.calls += 1
        if n < len(self.called):
            self.called[n].set()
        return self.tokens(n)

    def __call__(self) -> Any:
        if not self.asynchronous:
            return self._next()

        async def token() -> str:
            return self._next()

        return token()


def long_lived(_: int) -> str:
    return make_jwt(SECRET, "svc", ttl=3600)


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_an_expired_session_reconnects_with_the_providers_next_token(
    make_gateway: MakeGateway, transport: str
) -> None:
    """The first token expires during the session: over a WebSocket the server closes it
    4001; over HTTP the next poll is answered 401 TOKEN_EXPIRED and the session ends the same
    way. The client, reading its stream, asks the provider again, reconnects and resumes the
    stream from its cursor (no gap, no duplicate); commits go through the new session."""
    gateway = await jwt_gateway(make_gateway)
    store_id = new_store_id()
    provider = Provider(lambda n: make_jwt(SECRET, "svc", ttl=SHORT_TTL if n == 0 else 3600))
    opened = client if transport == "ws" else http_client
    async with (
        opened(gateway, store_id, token_provider=provider) as follower,
        client(gateway, store_id, bypass_token=BYPASS) as writer,
        aclosing(follower.events()) as stream,
    ):
        assert await writer.commit("e", {"n": 1}) == 1
        first = await asyncio.wait_for(anext(stream), WITHIN)
        assert [e.seq_num for e in first.events] == [1]
        # Reading on: the stream sees the close and reconnects.
        reading = asyncio.ensure_future(anext(stream))
        await wait_for_event(provider.called[1], WITHIN, "the second token request")
        assert await writer.commit("e", {"n": 2}) == 2
        second = await asyncio.wait_for(reading, WITHIN)
        assert [(e.seq_num, e.args) for e in second.events] == [(2, {"n": 2})]
        # The provider's client writes through its new session.
        assert await asyncio.wait_for(follower.commit("e", {"n": 3}), WITHIN) == 3
        assert follower.stats.closes == {4001: 1}
        assert follower.stats.connections == 2
        assert provider.calls == 2 == follower.stats.token_requests
        if transport == "http":
            assert follower.url.startswith("http://")
            assert (follower.stats.pings, follower.stats.pongs) == (0, 0)  # no HTTP keepalive


async def test_a_synchronous_provider_is_called_before_each_connect(
    make_gateway: MakeGateway,
) -> None:
    gateway = await jwt_gateway(make_gateway)
    provider = Provider(long_lived, asynchronous=False)
    async with client(gateway, new_store_id(), token_provider=provider) as store:
        assert await store.commit("e", {}) == 1
    assert provider.calls == 1


async def test_a_refused_token_asks_the_provider_once_more(make_gateway: MakeGateway) -> None:
    """The provider hands out a bad token first (a cache holding a stale one): 401, then the
    provider's next token connects."""
    gateway = await jwt_gateway(make_gateway)
    provider = Provider(lambda n: "stale-token" if n == 0 else long_lived(n))
    async with client(gateway, new_store_id(), token_provider=provider) as store:
        assert await store.commit("e", {}) == 1
    assert provider.calls == 2
    assert store.stats.connections == 1


async def test_a_provider_refused_twice_raises_without_retrying(
    make_gateway: MakeGateway,
) -> None:
    gateway = await jwt_gateway(make_gateway)
    provider = Provider(lambda n: make_jwt(SECRET, "svc", ttl=-3600))  # long expired
    store = client(gateway, new_store_id(), token_provider=provider)
    with pytest.raises(Refused) as caught:
        await asyncio.wait_for(store.__aenter__(), WITHIN)
    assert (caught.value.status, caught.value.code) == (401, "TOKEN_EXPIRED")
    assert provider.calls == 2


async def test_what_the_provider_raises_propagates(make_gateway: MakeGateway) -> None:
    gateway = await jwt_gateway(make_gateway)

    def broken() -> str:
        raise RuntimeError("the identity provider is down")

    store = client(gateway, new_store_id(), token_provider=broken)
    with pytest.raises(RuntimeError, match="identity provider"):
        await asyncio.wait_for(store.__aenter__(), WITHIN)
    not_a_string = client(gateway, new_store_id(), token_provider=lambda: b"bytes")
    with pytest.raises(TypeError, match="bytes"):
        await asyncio.wait_for(not_a_string.__aenter__(), WITHIN)


async def test_without_a_provider_an_expired_session_raises_4001(
    make_gateway: MakeGateway,
) -> None:
    """A fixed ``auth_token`` cannot be renewed: the 4001 close is a terminal
    ConnectionClosed, not a reconnect with the expired token."""
    gateway = await jwt_gateway(make_gateway)
    token = make_jwt(SECRET, "svc", ttl=SHORT_TTL)
    async with client(gateway, new_store_id(), auth_token=token) as store:
        with pytest.raises(ConnectionClosed) as caught:
            async for _ in store.events():
                pass
        # Commits fail the same way, without a retry.
        with pytest.raises(ConnectionClosed) as refused:
            await asyncio.wait_for(store.commit("e", {}), WITHIN)
        assert refused.value.code == 4001
    assert caught.value.code == 4001
    assert (store.stats.connections, store.stats.closes) == (1, {4001: 1})


def test_a_provider_excludes_the_fixed_credentials() -> None:
    def provider() -> str:
        return long_lived(0)

    url = "ws://127.0.0.1:1"
    with pytest.raises(ValueError, match="token_provider"):
        connect(url, "s", token_provider=provider, auth_token="x")
    with pytest.raises(ValueError, match="token_provider"):
        connect(url, "s", token_provider=provider, bypass_token="x")


async def test_over_http_a_refused_token_asks_the_provider_once_more(
    make_gateway: MakeGateway,
) -> None:
    gateway = await jwt_gateway(make_gateway)
    provider = Provider(lambda n: "stale-token" if n == 0 else long_lived(n))
    async with http_client(gateway, new_store_id(), token_provider=provider) as store:
        assert await store.commit("e", {}) == 1
    assert provider.calls == 2
    assert store.stats.connections == 1
    expired = Provider(lambda n: make_jwt(SECRET, "svc", ttl=-3600))
    refused = http_client(gateway, new_store_id(), token_provider=expired)
    with pytest.raises(Refused) as caught:
        await asyncio.wait_for(refused.__aenter__(), WITHIN)
    assert (caught.value.status, caught.value.code) == (401, "TOKEN_EXPIRED")
    assert expired.calls == 2


async def test_over_http_without_a_provider_an_expired_token_is_refused(
    make_gateway: MakeGateway,
) -> None:
    """A fixed ``auth_token`` over HTTP: the first request after its exp raises
    Refused(401, TOKEN_EXPIRED) to the stream and to commits, without a reconnect."""
    gateway = await jwt_gateway(make_gateway)
    token = make_jwt(SECRET, "svc", ttl=SHORT_TTL)

    async def follow(store: StoreClient) -> None:
        async for _ in store.events():
            pass

    async with http_client(gateway, new_store_id(), auth_token=token) as store:
        with pytest.raises(Refused) as caught:
            await asyncio.wait_for(follow(store), WITHIN)
        with pytest.raises(Refused) as refused:
            await asyncio.wait_for(store.commit("e", {}), WITHIN)
        assert refused.value.code == "TOKEN_EXPIRED"
    assert (caught.value.status, caught.value.code) == (401, "TOKEN_EXPIRED")
    assert (store.stats.connections, store.stats.closes) == (1, {4001: 1})
