"""Logging setup: plain lines for journald (priority prefix, no timestamp) or JSON.

:func:`later` logs the lines a server writes per connection (its open and close) in
batches: bound to the server's event loop (:func:`bind`), it keeps the line's level,
message, arguments and time, and makes and handles the records together at most
:data:`FLUSH_DELAY` later. A log call in the middle of a handshake costs ~25 µs of a
~250 µs handshake (its code and data are cold there: in a loop the same call takes ~5);
in a batch it costs about what it does in a loop. Every other line is logged as it comes,
after the kept ones (:class:`_KeptFirst`), so the output keeps its order; a record made
later carries the time of its call. A process killed with SIGKILL loses the kept lines
of its last :data:`FLUSH_DELAY`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Any

import orjson

# How long a line of :func:`later` may be kept, and how many lines at most.
FLUSH_DELAY = 0.05
MAX_KEPT = 1000

# syslog priorities, which journald reads from a "<N>" prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<6>gateway.server: message``; journald adds the time and strips the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"<{priority}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


_kept: list[tuple[logging.Logger, int, str, tuple[Any, ...], float]] = []
_loop: asyncio.AbstractEventLoop | None = None
_thread = 0  # the loop's thread: the kept lines are only touched from it
_timer: asyncio.TimerHandle | None = None
_flushing = False


def later(logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
    """``logger.log(level, msg, *args)``, in a batch when bound (see the module's doc)."""
    if not logger.isEnabledFor(level):
        return
    loop = _loop
    if loop is None or threading.get_ident() != _thread:
        logger.log(level, msg, *args)
        return
    global _timer
    _kept.append((logger, level, msg, args, time.time()))
    if len(_kept) >= MAX_KEPT:
        flush()
    elif _timer is None:
        _timer = loop.call_later(FLUSH_DELAY, flush)


def flush() -> None:
    """Make and handle the kept lines' records now, in the order they were logged."""
    global _timer, _flushing
    if _timer is not None:
        _timer.cancel()
        _timer = None
    if _flushing or not _kept:
        return
    _flushing = True
    try:
        while _kept:
            batch = _kept[:]
            _kept.clear()
            for logger, level, msg, args, created in batch:
                record = logger.makeRecord(logger.name, level, "", 0, msg, args, None)
                record.created = created
                record.msecs = (created - int(created)) * 1000
                logger.handle(record)
    finally:
        _flushing = False


def bind(loop: asyncio.AbstractEventLoop) -> None:
    """Batch :func:`later`'s lines on ``loop`` (the server's, from its thread)."""
    global _loop, _thread
    _loop, _thread = loop, threading.get_ident()


def unbind() -> None:
    """Handle what is kept; :func:`later` logs at once from now on."""
    global _loop
    _loop = None
    flush()


class _KeptFirst(logging.Filter):
    """Lets the kept lines through before any other record of the loop's thread reaches
    the handler (another thread's line may come before lines kept meanwhile)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _kept and not _flushing and threading.get_ident() == _thread:
            flush()
        return True


def setup(level: str, fmt: str) -> None:
    # No caller lookup per record (documented logging optimisation): the stack walk costs
    # time on every line and materialises the frames of suspended coroutines.
    logging._srcfile = None
    # Neither format shows the thread or the process: no lookups of them per record either
    # (a connection logs two lines, its open and its close).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else JournalFormatter())
    handler.addFilter(_KeptFirst())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # websockets logs handshake internals; our own open/close lines replace them.
    logging.getLogger("gateway.websockets").setLevel(logging.WARNING)
