"""The command line as operators and other tools use it: a real process."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from tests.helpers.daemon import Daemon, run_cli
from tests.helpers.timeouts import TIMEOUT_UNIT


class TestServe:
    async def test_port_zero_prints_address_serves_and_stops_on_sigterm(
        self, tmp_path: Path
    ) -> None:
        """`serve --port 0` prints the bound address, syncs, and exits 0 on SIGTERM."""
        daemon = await Daemon.start(
            "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path)
        )
        try:
            url = f"ws://127.0.0.1:{daemon.port}/?storeId=cli&transport=ws"
            async with connect(url) as ws:
                await ws.send('{"_tag":"Ping"}')
                assert orjson.loads(await ws.recv()) == {"_tag": "Pong"}
                daemon.send_signal(signal.SIGTERM)
                async with asyncio.timeout(10 * TIMEOUT_UNIT):
                    await ws.wait_closed()
                assert ws.close_code == 1001
            assert await daemon.wait(10 * TIMEOUT_UNIT) == 0
        finally:
            await daemon.kill()
        assert (tmp_path / "gateway.sqlite3").exists()

    async def test_config_error_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        """A bad configuration is refused before anything starts."""
        config = tmp_path / "bad.toml"
        config.write_text("[server]\nportt = 1\n")
        rc, _, err = await run_cli("serve", "--config", str(config), within=10 * TIMEOUT_UNIT)
        assert rc == 2
        assert "server.portt" in err

    async def test_busy_port_exits_3(self, tmp_path: Path) -> None:
        """A port already in use is a clear startup failure, not a traceback."""
        first = await Daemon.start("--port", "0", "--data-dir", str(tmp_path / "a"))
        try:
            rc, _, err = await run_cli(
                "serve",
                "--port",
                str(first.port),
                "--data-dir",
                str(tmp_path / "b"),
                within=10 * TIMEOUT_UNIT,
            )
            assert rc == 3
            assert "cannot listen" in err
        finally:
            await first.stop()
