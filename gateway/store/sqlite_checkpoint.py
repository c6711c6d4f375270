"""The SQLite backend's checkpointer: copies the WAL back into the database every second.

It runs in a thread of its own, beside the writer: an automatic checkpoint would run inside
some push's COMMIT and stall every push queued behind it (the writer's connection sets
``wal_autocheckpoint = 0``). A PASSIVE checkpoint never blocks the writer or readers; the
writer restarts the WAL from the beginning once a checkpoint has caught up, so it stays small.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

logger = logging.getLogger("gateway.store.sqlite")


class Checkpointer:
    """A thread that checkpoints ``path`` every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.done = threading.Event()
        """Set after each completed checkpoint."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread (blocking: call it from a worker thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            logger.error("checkpointer cannot open %s: %s", self.path, exc)
            return
        try:
            conn.execute("PRAGMA busy_timeout = 1000")
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.done.set()
                except sqlite3.Error as exc:
                    logger.warning("checkpoint failed: %s", exc)
        finally:
            conn.close()
