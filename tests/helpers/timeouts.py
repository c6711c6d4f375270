"""Every wait in the suite is a multiple of ``TIMEOUT_UNIT``, so a slow CI box can scale them
all up (``GATEWAY_TEST_TIMEOUT_UNIT``). Nothing in the suite sleeps to synchronise: it waits,
with a bound, for an event, a frame, a line or a process exit."""

from __future__ import annotations

import asyncio
import os

TIMEOUT_UNIT = float(os.environ.get("GATEWAY_TEST_TIMEOUT_UNIT", "1"))


async def wait_for_event(
    event: asyncio.Event, within: float = 5 * TIMEOUT_UNIT, what: str = "the event"
) -> None:
    """Wait until ``event`` is set; fail the test (not time out) after ``within`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), within)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {within:.1f}s") from None
