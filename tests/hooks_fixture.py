"""Hook functions for the hook tests (``[hooks] on_push = "tests.hooks_fixture:…"``).

Importable by the in-process gateways of the tests and by a ``gateway serve`` subprocess (it
runs from the repository root). What a hook saw is recorded in :data:`CALLS` (in-process
only). Stores named ``slow-*`` make :func:`wait_on_slow` block until :data:`RELEASE` is set
(or 30 s pass); :func:`sleep_sync` and :func:`sleep_async` sleep past any test timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

CALLS: list[dict[str, Any]] = []
RELEASE = threading.Event()
# Set by wait_on_slow each time a call for a slow-* store has started waiting.
WAITING = threading.Semaphore(0)


def record(**call: Any) -> None:
    CALLS.append(call)


def refuse_deletes(
    store_id: str,
    subject: str,
    claims: Mapping[str, object],
    instance_id: str | None,
    events: list[dict[str, Any]],
) -> str | None:
    """Sync: allows everything but events named *Deleted, unless the claims say admin."""
    record(
        hook="push",
        store_id=store_id,
        subject=subject,
        claims=dict(claims),
        instance_id=instance_id,
        events=events,
        thread=threading.current_thread().name,
    )
    for event in events:
        if event["name"].endswith("Deleted") and claims.get("role") != "admin":
            return f"only admins delete (event seqNum {event['seqNum']})"
    return None


async def refuse_mallory(
    store_id: str,
    subject: str,
    claims: Mapping[str, object],
    instance_id: str | None,
    events: list[dict[str, Any]],
) -> str | None:
    """Async: refuses the subject mallory."""
    await asyncio.sleep(0)
    record(
        hook="push-async",
        store_id=store_id,
        subject=subject,
        events=events,
        thread=threading.current_thread().name,
    )
    return "mallory may not write" if subject == "mallory" else None


def raises(*_: Any) -> None:
    raise ValueError("the hook's database password is hunter2")


def returns_a_number(*_: Any) -> int:
    return 42


def sleep_sync(*_: Any) -> None:
    time.sleep(30)


async def sleep_async(*_: Any) -> None:
    await asyncio.sleep(30)


def wait_on_slow(store_id: str, *_: Any) -> str | None:
    """Sync: for a slow-* store, blocks until RELEASE is set (at most 30 s)."""
    if store_id.startswith("slow-"):
        WAITING.release()
        RELEASE.wait(30)
    return None


def private_pulls(
    store_id: str, subject: str, claims: Mapping[str, object], instance_id: str | None
) -> str | None:
    """on_pull: private-* stores are for admins only."""
    record(
        hook="pull",
        store_id=store_id,
        subject=subject,
        claims=dict(claims),
        instance_id=instance_id,
    )
    if store_id.startswith("private-") and claims.get("role") != "admin":
        return f"{subject} may not read {store_id}"
    return None


async def pull_raises(*_: Any) -> None:
    raise RuntimeError("pull hook broke")


def exits(*_: Any) -> None:
    raise SystemExit(3)


async def exits_async(*_: Any) -> None:
    raise SystemExit(3)
