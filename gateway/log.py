"""Logging setup: plain lines for journald (priority prefix, no timestamp) or JSON."""

from __future__ import annotations

import logging
import sys
import time

import orjson

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
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # websockets logs handshake internals; our own open/close lines replace them.
    logging.getLogger("gateway.websockets").setLevel(logging.WARNING)
