"""gateway.log.later: per-connection lines made in batches on the bound loop, in order,
with the time of their call; every other line lets the kept ones through first."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from gateway import log
from gateway.log import MAX_KEPT, JournalFormatter, JsonFormatter


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter())
    handler.addFilter(log._KeptFirst())
    logger = logging.getLogger("test.later")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, stream, handler
    finally:
        log.unbind()
        logger.removeHandler(handler)


def test_unbound_it_logs_at_once(
    lines: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = lines
    log.later(logger, logging.INFO, "open %s", "a")
    assert stream.getvalue() == "<6>test.later: open a\n"


async def test_bound_lines_come_together_after_the_delay_with_their_own_time(
    lines: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = lines
    handled = asyncio.Event()
    times: list[float] = []

    class Spy(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            times.append(record.created)
            handled.set()
            return True

    handler.addFilter(Spy())
    log.bind(asyncio.get_running_loop())
    called = time.time()
    log.later(logger, logging.INFO, "open %s", "a")
    log.later(logger, logging.INFO, "close %s", "a")
    log.later(logger, logging.DEBUG, "not at this level")
    assert stream.getvalue() == ""  # kept
    async with asyncio.timeout(2):
        await handled.wait()
    assert stream.getvalue() == "<6>test.later: open a\n<6>test.later: close a\n"
    assert len(times) == 2
    # The time of the call, not of the batch (FLUSH_DELAY later).
    assert all(abs(t - called) < 0.04 for t in times)


async def test_any_other_line_lets_the_kept_ones_out_first(
    lines: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = lines
    log.bind(asyncio.get_running_loop())
    log.later(logger, logging.INFO, "open %s", "a")
    logger.warning("then this")
    assert stream.getvalue().splitlines() == ["<6>test.later: open a", "<4>test.later: then this"]


async def test_unbind_and_a_full_batch_handle_what_is_kept(
    lines: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = lines
    log.bind(asyncio.get_running_loop())
    for i in range(MAX_KEPT):
        log.later(logger, logging.INFO, "line %d", i)
    assert stream.getvalue().count("\n") == MAX_KEPT  # the last one filled the batch
    log.later(logger, logging.INFO, "kept")
    log.unbind()
    assert stream.getvalue().splitlines()[-1] == "<6>test.later: kept"
    log.later(logger, logging.INFO, "at once")
    assert stream.getvalue().splitlines()[-1] == "<6>test.later: at once"


async def test_json_lines_keep_the_time_of_the_call(
    lines: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = lines
    handler.setFormatter(JsonFormatter())
    log.bind(asyncio.get_running_loop())
    log.later(logger, logging.INFO, "open")
    called = time.time()
    log.flush()
    record = orjson.loads(stream.getvalue())
    assert record["message"] == "open"
    assert abs(record["ts"] - called) < 0.01


async def test_another_threads_lines_are_logged_at_once_and_leave_the_kept_ones(
    lines: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    """The kept lines belong to the loop's thread: another thread logs at once, and neither
    touches them nor the loop's timer."""
    logger, stream, _ = lines
    log.bind(asyncio.get_running_loop())
    log.later(logger, logging.INFO, "kept")

    def elsewhere() -> None:
        log.later(logger, logging.INFO, "later, from a thread")
        logger.warning("warning, from a thread")

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(5)
    assert stream.getvalue().splitlines() == [
        "<6>test.later: later, from a thread",
        "<4>test.later: warning, from a thread",
    ]
    log.flush()
    assert stream.getvalue().splitlines()[-1] == "<6>test.later: kept"
