"""The command line as operators and other tools use it: a real process."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from tests.conftest import TIMEOUT_UNIT

LISTENING = re.compile(r"listening on ws://(\S+):(\d+)$")


async def start(
    *args: str, env: dict[str, str] | None = None, drain: bool = False
) -> tuple[asyncio.subprocess.Process, int]:
    """Run ``python -m gateway ARGS`` and wait for its ``listening on`` line.

    With ``drain``, stderr keeps being read in the background so a chatty server never
    blocks on a full pipe.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20 * TIMEOUT_UNIT):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "gateway exited before listening"
            match = LISTENING.search(line.strip())
            if match:
                break
    if drain:
        _drains.add(asyncio.get_running_loop().create_task(_drain(proc.stderr)))
    return proc, int(match.group(2))


_drains: set[asyncio.Task[None]] = set()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


class TestServe:
    async def test_port_zero_prints_address_serves_and_stops_on_sigterm(
        self, tmp_path: Path
    ) -> None:
        """`serve --port 0` prints the bound address, syncs, and exits 0 on SIGTERM."""
        proc, port = await start(
            "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path)
        )
        try:
            url = f"ws://127.0.0.1:{port}/?storeId=cli&transport=ws"
            async with connect(url) as ws:
                await ws.send('{"_tag":"Ping"}')
                assert orjson.loads(await ws.recv()) == {"_tag": "Pong"}
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(10 * TIMEOUT_UNIT):
                    await ws.wait_closed()
                assert ws.close_code == 1001
            async with asyncio.timeout(10 * TIMEOUT_UNIT):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert (tmp_path / "gateway.sqlite3").exists()

    async def test_config_error_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        """A bad configuration is refused before anything starts."""
        config = tmp_path / "bad.toml"
        config.write_text("[server]\nportt = 1\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(10 * TIMEOUT_UNIT):
            _, err = await proc.communicate()
        assert proc.returncode == 2
        assert b"server.portt" in err

    async def test_busy_port_exits_3(self, tmp_path: Path) -> None:
        """A port already in use is a clear startup failure, not a traceback."""
        first, port = await start("serve", "--port", "0", "--data-dir", str(tmp_path / "a"))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "b"),
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(10 * TIMEOUT_UNIT):
                _, err = await proc.communicate()
            assert proc.returncode == 3
            assert b"cannot listen" in err
        finally:
            first.terminate()
            await first.wait()
