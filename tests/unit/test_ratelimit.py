"""FailureTracker (per-IP lockout) and PushLimiter (per-subject token bucket), time injected."""

from __future__ import annotations

import itertools

import pytest

from gateway.auth.limits import FailureTracker, PushLimiter

T0 = 1_000_000.0


class TestFailureTracker:
    def test_locks_after_max_failures_in_window(self) -> None:
        tracker = FailureTracker(3, 900.0)
        assert tracker.retry_after("1.2.3.4", T0) is None
        assert tracker.record_failure("1.2.3.4", T0) is False
        assert tracker.record_failure("1.2.3.4", T0 + 10) is False
        assert tracker.retry_after("1.2.3.4", T0 + 10) is None
        assert tracker.record_failure("1.2.3.4", T0 + 20) is True
        # Locked until the oldest of the failures leaves the window.
        assert tracker.retry_after("1.2.3.4", T0 + 20) == pytest.approx(880.0)
        assert tracker.retry_after("1.2.3.4", T0 + 899) == pytest.approx(1.0)
        assert tracker.retry_after("1.2.3.4", T0 + 900) is None

    def test_sliding_window(self) -> None:
        """Failures spread wider than the window never lock."""
        tracker = FailureTracker(3, 60.0)
        for i in range(20):
            assert tracker.record_failure("ip", T0 + i * 30.0) is False
            assert tracker.retry_after("ip", T0 + i * 30.0) is None

    def test_unlocks_after_window_and_counts_afresh(self) -> None:
        tracker = FailureTracker(2, 100.0)
        tracker.record_failure("ip", T0)
        assert tracker.record_failure("ip", T0 + 1) is True
        assert tracker.retry_after("ip", T0 + 50) is not None
        later = T0 + 200
        assert tracker.retry_after("ip", later) is None
        assert tracker.record_failure("ip", later) is False
        assert tracker.record_failure("ip", later + 1) is True

    def test_ips_are_independent(self) -> None:
        tracker = FailureTracker(2, 100.0)
        tracker.record_failure("10.0.0.1", T0)
        tracker.record_failure("10.0.0.1", T0)
        assert tracker.retry_after("10.0.0.1", T0) is not None
        assert tracker.retry_after("10.0.0.2", T0) is None
        assert tracker.retry_after("::1", T0) is None

    def test_continued_failures_extend_the_lockout(self) -> None:
        """Only the last max_failures timestamps are kept; hammering keeps the IP locked."""
        tracker = FailureTracker(3, 100.0)
        for i in range(1000):
            tracker.record_failure("ip", T0 + i * 0.1)
        now = T0 + 999 * 0.1
        # The oldest kept failure is the third-to-last one.
        assert tracker.retry_after("ip", now) == pytest.approx(100.0 - 0.2)

    def test_memory_bounded_per_ip(self) -> None:
        tracker = FailureTracker(5, 100.0)
        for i in range(10_000):
            tracker.record_failure("ip", T0 + i * 0.001)
        assert len(tracker) == 1
        assert len(tracker._failures["ip"]) <= 5

    def test_memory_bounded_across_ips(self) -> None:
        tracker = FailureTracker(1, 100.0, max_clients=100)
        for i in range(10_000):
            tracker.record_failure(f"10.0.{i // 256}.{i % 256}", T0)
            assert len(tracker) <= 100
        assert len(tracker) == 100

    def test_least_recently_seen_ip_is_forgotten_first(self) -> None:
        tracker = FailureTracker(1, 100.0, max_clients=3)
        for ip in ("a", "b", "c"):
            tracker.record_failure(ip, T0)
        tracker.record_failure("a", T0 + 1)  # a is seen again
        tracker.record_failure("d", T0 + 2)  # evicts b, the least recently seen
        assert tracker.retry_after("b", T0 + 2) is None
        for ip in ("a", "c", "d"):
            assert tracker.retry_after(ip, T0 + 2) is not None, ip

    def test_expired_entries_are_dropped(self) -> None:
        tracker = FailureTracker(3, 10.0)
        for i in range(50):
            tracker.record_failure(f"ip{i}", T0)
        assert len(tracker) == 50
        for i in range(50):
            assert tracker.retry_after(f"ip{i}", T0 + 11) is None
        assert len(tracker) == 0

    def test_limits_can_change(self) -> None:
        """The gate updates max_failures/window on reload; counts carry over."""
        tracker = FailureTracker(5, 100.0)
        for _ in range(3):
            tracker.record_failure("ip", T0)
        assert tracker.retry_after("ip", T0) is None
        tracker.max_failures = 3
        assert tracker.retry_after("ip", T0) is not None

    def test_repeated_credential_counts_once(self) -> None:
        """A client retrying the same refused token is one failure, not a lockout."""
        tracker = FailureTracker(3, 100.0)
        for i in range(50):
            assert tracker.record_failure("ip", T0 + i, "fp-stale") is False
        assert tracker.retry_after("ip", T0 + 50) is None
        assert tracker.record_failure("ip", T0 + 51, "fp-a") is False
        assert tracker.record_failure("ip", T0 + 52, "fp-b") is True
        assert tracker.retry_after("ip", T0 + 52) is not None

    def test_distinct_credentials_each_count(self) -> None:
        tracker = FailureTracker(3, 100.0)
        assert tracker.record_failure("ip", T0, "g1") is False
        assert tracker.record_failure("ip", T0, "g2") is False
        assert tracker.record_failure("ip", T0, "g3") is True

    def test_repeat_counts_again_after_the_window(self) -> None:
        tracker = FailureTracker(2, 10.0)
        tracker.record_failure("ip", T0, "fp")
        assert tracker.record_failure("ip", T0 + 5, "fp") is False
        # The first one aged out; the same credential now counts afresh.
        assert tracker.record_failure("ip", T0 + 11, "fp") is False
        assert tracker.record_failure("ip", T0 + 12, "other") is True

    def test_same_credential_from_two_ips_counts_for_each(self) -> None:
        tracker = FailureTracker(1, 100.0)
        assert tracker.record_failure("ip-a", T0, "fp") is True
        assert tracker.record_failure("ip-b", T0, "fp") is True


class TestPushLimiter:
    def test_burst_then_paced(self) -> None:
        limiter = PushLimiter(rate=5.0, burst=2)
        delays = [limiter.reserve("alice", T0) for _ in range(5)]
        assert delays == pytest.approx([0.0, 0.0, 0.2, 0.4, 0.6])

    def test_never_refuses(self) -> None:
        """Over-limit pushes get a (growing) delay, never a refusal."""
        limiter = PushLimiter(rate=10.0, burst=1)
        delays = [limiter.reserve("alice", T0) for _ in range(1000)]
        assert delays[0] == 0.0
        assert delays[-1] == pytest.approx(99.9)
        assert all(b > a for a, b in itertools.pairwise(delays[1:]))

    def test_refills_over_time(self) -> None:
        limiter = PushLimiter(rate=5.0, burst=1)
        assert limiter.reserve("alice", T0) == 0.0
        assert limiter.reserve("alice", T0) == pytest.approx(0.2)
        # That push was scheduled at T0 + 0.2; by T0 + 0.4 one token has refilled.
        assert limiter.reserve("alice", T0 + 0.4) == pytest.approx(0.0, abs=1e-9)
        # Idle for a long time: only `burst` tokens are saved up.
        assert limiter.reserve("alice", T0 + 100) == 0.0
        assert limiter.reserve("alice", T0 + 100) == pytest.approx(0.2)

    def test_steady_rate_is_not_delayed(self) -> None:
        limiter = PushLimiter(rate=10.0, burst=1)
        for i in range(100):
            assert limiter.reserve("alice", T0 + i * 0.1) == pytest.approx(0.0, abs=1e-9)

    def test_sequential_pushes_take_n_over_rate(self) -> None:
        """A client that waits for each delay: n pushes after the burst take n / rate."""
        limiter = PushLimiter(rate=5.0, burst=1)
        now = T0
        for _ in range(6):
            now += limiter.reserve("alice", now)
        assert now - T0 == pytest.approx(1.0)

    def test_subjects_are_independent(self) -> None:
        limiter = PushLimiter(rate=1.0, burst=1)
        assert limiter.reserve("alice", T0) == 0.0
        assert limiter.reserve("alice", T0) == pytest.approx(1.0)
        assert limiter.reserve("bob", T0) == 0.0
        assert limiter.reserve("alice", T0) == pytest.approx(2.0)

    def test_zero_rate_disables(self) -> None:
        limiter = PushLimiter(rate=0.0, burst=1)
        assert all(limiter.reserve("alice", T0) == 0.0 for _ in range(100))
        assert len(limiter) == 0

    def test_memory_bounded(self) -> None:
        limiter = PushLimiter(rate=1.0, burst=1, max_subjects=50)
        for i in range(5000):
            limiter.reserve(f"user-{i}", T0)
            assert len(limiter) <= 50
        assert len(limiter) == 50

    def test_full_buckets_are_forgotten(self) -> None:
        """A bucket that refilled completely carries no state and is dropped."""
        limiter = PushLimiter(rate=1.0, burst=2)
        for i in range(100):
            limiter.reserve(f"user-{i}", T0)
        assert len(limiter) == 100
        limiter.reserve("late", T0 + 10)
        assert len(limiter) == 1
        # A forgotten subject starts again with a full burst.
        assert limiter.reserve("user-0", T0 + 10) == 0.0
        assert limiter.reserve("user-0", T0 + 10) == 0.0
        assert limiter.reserve("user-0", T0 + 10) == pytest.approx(1.0)

    def test_indebted_buckets_are_kept(self) -> None:
        """A subject that is being delayed is not forgotten while its debt stands."""
        limiter = PushLimiter(rate=1.0, burst=1)
        for _ in range(5):
            limiter.reserve("alice", T0)
        limiter.reserve("bob", T0 + 1)
        assert len(limiter) == 2
        assert limiter.reserve("alice", T0 + 1) == pytest.approx(4.0)
