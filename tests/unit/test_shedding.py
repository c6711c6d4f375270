"""Load shedding (gateway.shedding): when a sync handshake is refused, and with what."""

from __future__ import annotations

import pytest

from gateway.client.backoff import Backoff, retry_after_seconds
from gateway.errors import RefusalCode
from gateway.shedding import MAX_RETRY_AFTER, is_sync_target, retry_after, shed


@pytest.mark.parametrize(
    ("pending", "limit", "refused"),
    [
        (0, 4, False),
        (3, 4, False),
        (4, 4, True),
        (5000, 4, True),
        (0, 1, False),
        (1, 1, True),
        (10**6, 0, False),  # 0: never shed
        (10**6, -1, False),
    ],
)
def test_shed_refuses_from_the_limit_on(pending: int, limit: int, refused: bool) -> None:
    refusal = shed(pending, limit=limit)
    assert (refusal is not None) is refused
    if refusal is not None:
        assert refusal.code is RefusalCode.OVERLOADED
        assert refusal.status == 503
        headers = dict(refusal.headers)
        assert int(headers["Retry-After"]) == retry_after(pending, limit)


@pytest.mark.parametrize(
    ("pending", "limit", "seconds"),
    [
        (4, 4, 1),
        (7, 4, 1),
        (8, 4, 2),
        (12, 4, 3),
        (2048, 2048, 1),
        (6000, 2048, 2),
        (10**9, 4, MAX_RETRY_AFTER),
        (5, 0, 1),
    ],
)
def test_retry_after_grows_with_the_queue(pending: int, limit: int, seconds: int) -> None:
    assert retry_after(pending, limit) == seconds


def test_backoff_waits_at_least_retry_after() -> None:
    backoff = Backoff(base=0.05, cap=30.0)
    backoff.failed(retry_after=2.0)
    delays = [backoff.next_delay() for _ in range(200)]
    assert min(delays) >= 2.0
    assert max(delays) <= 3.0
    assert max(delays) > min(delays), "clients shed together must not return together"
    backoff.failed()  # a failure without advice: the backoff's own delay again
    assert backoff.next_delay() <= 0.1
    backoff.failed(retry_after=10_000)
    assert backoff.next_delay() <= 30.0 * 1.5  # capped
    backoff.succeeded()
    assert backoff.next_delay() == 0.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0.0),
        ("", 0.0),
        ("3", 3.0),
        (" 7 ", 7.0),
        ("-1", 0.0),
        ("soon", 0.0),
        ("Fri, 04 Dec 2026 21:00:00 GMT", 0.0),
    ],
)
def test_retry_after_header(header: str | None, seconds: float) -> None:
    assert retry_after_seconds(header) == seconds


@pytest.mark.parametrize(
    ("target", "sync"),
    [
        ("/?storeId=s&transport=ws", True),
        ("/sync?payload=x&storeId=s", True),
        ("/?transport=ws", True),  # refused later (MISSING_STORE_ID): shed alike
        ("/", False),
        ("/healthz", False),
        ("/metrics", False),
        ("/stats?x=1", False),
        ("/storeId=s", False),  # in the path, not the query
    ],
)
def test_is_sync_target(target: str, sync: bool) -> None:
    assert is_sync_target(target) is sync
