"""Bounded, clock-injected limiters: failed-auth lockout per IP, push rate per subject."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass


class FailureTracker:
    """Counts failed authentication attempts per client IP within a sliding window.

    After ``max_failures`` failures inside ``window`` seconds the IP is locked out until the
    oldest of those failures leaves the window. A failure that repeats a credential already
    counted for that IP in the window is not counted again: the real client retries a refused
    handshake forever with the same token, and one stale app must not lock out every user
    behind the same address. Guessing needs *different* credentials, and those all count.

    Memory is bounded: at most ``max_failures`` entries per IP and ``max_clients`` IPs (the
    least recently seen is forgotten first).
    """

    def __init__(self, max_failures: int, window: float, *, max_clients: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[tuple[float, str | None]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, ip: str, now: float) -> deque[tuple[float, str | None]] | None:
        entries = self._failures.get(ip)
        if entries is None:
            return None
        while entries and entries[0][0] <= now - self.window:
            entries.popleft()
        if not entries:
            del self._failures[ip]
            return None
        return entries

    def retry_after(self, ip: str, now: float) -> float | None:
        """Seconds until ``ip`` may try again, or None when it is not locked out."""
        entries = self._recent(ip, now)
        if entries is None or len(entries) < self.max_failures:
            return None
        return max(entries[0][0] + self.window - now, 0.0)

    def record_failure(self, ip: str, now: float, credential: str | None = None) -> bool:
        """Count a failure (``credential``: a fingerprint of what was presented, if any);
        True when this one locks the IP out."""
        entries = self._recent(ip, now)
        if entries is None:
            entries = self._failures[ip] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(ip)
            if credential is not None and any(seen == credential for _, seen in entries):
                return False
        entries.append((now, credential))
        return len(entries) >= self.max_failures


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class PushLimiter:
    """A token bucket per subject: ``rate`` pushes per second, bursts of ``burst``.

    :meth:`reserve` never refuses: it returns how long the caller must wait, so over-limit
    pushes are delayed, never dropped. Buckets that refilled completely are forgotten.
    """

    def __init__(self, rate: float, burst: int, *, max_subjects: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_subjects = max_subjects
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def reserve(self, subject: str, now: float) -> float:
        """Take one token for ``subject``; returns the delay (seconds) before it is valid."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(subject)
        if bucket is None:
            self._evict(now)
            bucket = self._buckets[subject] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(subject)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        bucket.tokens -= 1.0
        if bucket.tokens >= 0:
            return 0.0
        return -bucket.tokens / self.rate

    def _evict(self, now: float) -> None:
        """Make room for one more bucket."""
        while len(self._buckets) >= self.max_subjects:
            self._buckets.popitem(last=False)
        # Drop the least recently used buckets that are full again: they carry no state.
        while self._buckets:
            bucket = next(iter(self._buckets.values()))
            if bucket.tokens + (now - bucket.updated) * self.rate < self.burst:
                break
            self._buckets.popitem(last=False)
