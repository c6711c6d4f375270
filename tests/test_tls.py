"""wss:// and https:// on the listening port, without a reverse proxy (``server.tls_*``)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import ssl
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from gateway.configfile import build_config
from gateway.errors import ConfigError
from tests.helpers.certs import TestCA
from tests.helpers.clients import RpcClient
from tests.helpers.harness import MakeGateway
from tests.helpers.timeouts import TIMEOUT_UNIT
from tests.helpers.urls import sync_query
from tests.helpers.wire import HTTP_PING, make_events, new_store_id, request_frame, seqs_of


@pytest.fixture(name="ca")
def _ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


def _client_context(ca: TestCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.ca_file))


async def _peer_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new TLS connection is shown."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def test_wss_and_https_on_one_port(make_gateway: MakeGateway, ca: TestCA) -> None:
    """With a certificate configured, a WebSocket client syncs over wss:// and the HTTP
    transport answers over https://, on the same port; a plain-TCP client gets nowhere."""
    cert = ca.issue()
    gw = await make_gateway(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))
    assert gw.gw.scheme == "wss"
    context = _client_context(ca)
    store = new_store_id()
    url = f"wss://127.0.0.1:{gw.port}/?{sync_query(store)}"
    client = await RpcClient.open(url, store, ssl=context)
    try:
        await client.push_ok(make_events(1, 2))
        assert seqs_of(await client.pull()) == [1, 2]
    finally:
        await client.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=context)
    try:
        body = orjson.dumps(request_frame("0", HTTP_PING, {"storeId": store}))
        writer.write(
            f"POST /?{sync_query(store, transport='http')} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        answer = await asyncio.wait_for(reader.read(), 5 * TIMEOUT_UNIT)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
        assert b"SyncMessage.Pong" in answer
    finally:
        writer.close()
    # Plain HTTP on the TLS port: no answer in clear text, and the server goes on.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = await asyncio.wait_for(reader.read(), 5 * TIMEOUT_UNIT)
    assert not got.startswith(b"HTTP/1.1 200"), got[:100]
    writer.close()
    assert await _peer_serial(gw.port, context) == cert.serial


async def test_certificate_reload_keeps_connections(make_gateway: MakeGateway, ca: TestCA) -> None:
    """A reload after the files were renewed: new handshakes see the new certificate, an open
    session carries on."""
    first = ca.issue("server")
    gw = await make_gateway(tls_cert_file=str(first.cert_file), tls_key_file=str(first.key_file))
    context = _client_context(ca)
    store = new_store_id()
    client = await RpcClient.open(
        f"wss://127.0.0.1:{gw.port}/?{sync_query(store)}", store, ssl=context
    )
    try:
        await client.push_ok(make_events(1, 1))
        renewed = ca.issue("renewed")
        shutil.copy(renewed.cert_file, first.cert_file)
        shutil.copy(renewed.key_file, first.key_file)
        await gw.gw.reload(gw.gw.config)
        assert await _peer_serial(gw.port, context) == renewed.serial
        await client.push_ok(make_events(2, 1))
        assert seqs_of(await client.pull()) == [1, 2]
    finally:
        await client.close()


async def test_broken_certificate_on_reload_keeps_the_old_one(
    make_gateway: MakeGateway, ca: TestCA
) -> None:
    """A reload whose key does not match its certificate is refused; TLS goes on with the old
    chain and the old configuration."""
    cert = ca.issue()
    gw = await make_gateway(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))
    other = ca.issue("other")
    config = gw.gw.config
    broken = dataclasses.replace(config.server, tls_key_file=str(other.key_file))
    with pytest.raises(ConfigError, match="tls"):
        await gw.gw.reload(dataclasses.replace(config, server=broken))
    assert gw.gw.config is config
    assert await _peer_serial(gw.port, _client_context(ca)) == cert.serial


def test_tls_files_come_in_pairs() -> None:
    with pytest.raises(ConfigError, match="set both or neither"):
        build_config({"server": {"tls_cert_file": "/x.pem"}}, {})
