"""An acked push is durable: SIGKILL the process under push load, restart, every ack is there."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.helpers.clients import RpcClient
from tests.helpers.daemon import Daemon, ws_url
from tests.helpers.wire import make_events, seqs_of

STORES = 4
PUSHES_PER_STORE = 400


class Progress:
    """Counts acks across pushers and signals once enough have arrived to kill the server."""

    def __init__(self, threshold: int) -> None:
        self.count = 0
        self.threshold = threshold
        self.enough = asyncio.Event()
        self.killed = asyncio.Event()

    def acked(self) -> None:
        self.count += 1
        if self.count >= self.threshold:
            self.enough.set()


async def pusher(port: int, store_id: str, acked: list[int], progress: Progress) -> None:
    """Push single-event batches back to back, recording each acked seqNum."""
    client = await RpcClient.open(ws_url(port, store_id), store_id)
    try:
        for seq in range(1, PUSHES_PER_STORE + 1):
            rid = await client.send_push(make_events(seq, 1), None)
            frame = await client.wait_exit(rid)
            assert frame["exit"]["_tag"] == "Success", frame
            acked.append(seq)
            progress.acked()
    except Exception:
        # The connection dies with the process; only what was acked before counts.
        assert progress.killed.is_set()
    finally:
        await client.ws.close()


async def test_sigkill_loses_no_acked_event(tmp_path: Path) -> None:
    """Every event acked before SIGKILL is in the log after restart, in a gapless chain."""
    daemon = await Daemon.start("--port", "0", "--data-dir", str(tmp_path))
    acked: dict[str, list[int]] = {f"kill-{i}": [] for i in range(STORES)}
    progress = Progress(STORES * PUSHES_PER_STORE // 4)
    tasks = [asyncio.create_task(pusher(daemon.port, s, a, progress)) for s, a in acked.items()]
    try:
        # Kill once a good share of pushes were acked, while pushes are still in flight.
        async with asyncio.timeout(30):
            await progress.enough.wait()
        progress.killed.set()
        await daemon.kill()
        await asyncio.gather(*tasks)
    finally:
        await daemon.kill()

    daemon = await Daemon.start("--port", "0", "--data-dir", str(tmp_path))
    try:
        for store_id, seqs in acked.items():
            assert seqs, "every pusher got some acks before the kill"
            client = await RpcClient.open(ws_url(daemon.port, store_id), store_id)
            stored = seqs_of(await client.pull())
            await client.close()
            # Nothing acked is lost; at most the one in-flight push may also have landed.
            assert stored[: len(seqs)] == seqs
            assert len(stored) - len(seqs) <= 1
            assert stored == list(range(1, len(stored) + 1))
    finally:
        await daemon.stop()
