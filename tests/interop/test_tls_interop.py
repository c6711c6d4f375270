"""The real LiveStore 0.4.0 client over ``wss://`` straight to gateway (no proxy), trusting a
self-signed CA given to Node (``NODE_EXTRA_CA_CERTS``), across a certificate renewal (SIGHUP)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.certs import TestCA
from tests.helpers.ci import skip_or_fail
from tests.interop.test_interop import (
    GatewayProcess,
    NodeClient,
    _prerequisites_problem,
    event_ids,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


async def test_livestore_syncs_over_wss_across_a_certificate_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A syncs over wss://; the certificate is renewed and reloaded; B boots against the new
    certificate and catches up, A's session is never dropped and gets B's events live."""
    problem = _prerequisites_problem()
    if problem is not None:
        skip_or_fail(problem, ci_prefix="interop prerequisites missing under CI: ")
    ca = TestCA(tmp_path)
    cert = ca.issue()
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(ca.ca_file))
    gw = GatewayProcess(
        tmp_path / "data",
        env={
            "GATEWAY_SERVER_TLS_CERT_FILE": str(cert.cert_file),
            "GATEWAY_SERVER_TLS_KEY_FILE": str(cert.key_file),
        },
    )
    await gw.start()
    started: list[NodeClient] = []
    try:
        assert gw.log_lines(r"listening on wss://"), gw.log_tail()
        url = f"wss://127.0.0.1:{gw.port}"
        a = await NodeClient.start("client-A", url=url, store_id="tls-store")
        started.append(a)
        await a.commit("A", 2)
        await a.wait_rows(2, within=15)

        renewed = ca.issue("renewed")
        shutil.copy(renewed.cert_file, cert.cert_file)
        shutil.copy(renewed.key_file, cert.key_file)
        assert gw.daemon is not None
        assert "configuration reloaded" in await gw.daemon.reload()

        b = await NodeClient.start(
            "client-B", url=url, store_id="tls-store", blocking_initial_sync=True
        )
        started.append(b)
        assert b.ready_info["rowCount"] == 2
        await b.commit("B", 1)
        await a.wait_rows(3, within=15)
        assert event_ids(await a.dump()) == ["A-1", "A-2", "B-1"]
        assert gw.log_lines(r"close transport=ws") == [], "a session was dropped"
    finally:
        for client in started:
            await client.shutdown()
        await gw.stop()
