"""The daemon gates CPython's full collections (gateway.daemon.FULL_COLLECTION_GATE): a
reconnect storm grows the heap by a quarter every few hundred handshakes, and each full
collection would traverse every connection."""

from __future__ import annotations

import gc
from pathlib import Path

from gateway.app import Gateway
from gateway.configfile import make_config
from gateway.daemon import FULL_COLLECTION_GATE, serve


async def test_serve_gates_full_collections(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert before[2] != FULL_COLLECTION_GATE, "the test must start from other thresholds"
    seen: list[tuple[int, int, int]] = []

    def listening(gateway: Gateway) -> None:
        seen.append(gc.get_threshold())
        gateway.close()

    gateway = Gateway(make_config(data_dir=str(tmp_path), port=0))
    try:
        await serve(gateway, on_listening=listening)
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    assert seen == [(before[0], before[1], FULL_COLLECTION_GATE)]
