"""The Python client (:mod:`gateway.client`) under measurement, in a process of its own.

``python -m bench.pyclient follow|commit SPEC_JSON`` connects to a running gateway with the
server bypass token (from ``GATEWAY_BENCH_BYPASS``), does one measurement and prints its
result as one JSON line (:class:`FollowRun` or :class:`CommitRun`) on stdout. The bench
(:mod:`bench.rigs.client`) starts it pinned to the load generator's CPU, as a service would
run beside its server, and compares it with the load generator doing the same job.

The gateway package imported is the one in ``GATEWAY_BENCH_CLIENT_ROOT`` when set (the
bench's ``--gateway-root``: A/B-test a client change), else the installed one; the result
names the file (``client_module``).

The client runs as a service would run it: garbage collection on, nothing tuned (the load
generator's catch-up turns gc off while it measures). Every loop is bounded in time and
count. With ``"profile": PATH`` in the spec, the measured part runs under cProfile and its
stats are written to PATH (``.pstats``, and a ``.txt`` summary beside it); numbers measured
that way are not benchmark numbers.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from bench.frames import TEXTS
from bench.procs import proc_cpu_seconds
from bench.results import FLAT, Latency, Usage, percentiles, to_json
from bench.rigs.common import Meter

# The events the client commits: the shape the load generator pushes (bench.frames).
EVENT_NAME = "v1.TodoCreated"
# Past the expected count, a follow stops: the store holds nothing more.
FOLLOW_SLACK = 2
BYPASS_ENV = "GATEWAY_BENCH_BYPASS"
ROOT_ENV = "GATEWAY_BENCH_CLIENT_ROOT"


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowRun:
    """One ``events(after=None, live=False)`` over the whole store."""

    events_received: int
    order_errors: int
    batches: int
    seconds: float
    events_per_s: float
    client_cpu_us_per_event: float | None
    client_cpu_util: float
    server_cpu_us_per_event: float | None
    client_module: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRun:
    """One writer (one client, one store) committing back to back for a while.

    ``concurrency`` is the number of tasks calling ``commit``/``commit_many`` for the
    client, the pushes in flight for the load generator; ``calls`` counts acked calls or
    pushes, ``ack_latency`` is per call or push.
    """

    writer: str
    concurrency: int
    batch: int
    acked_events: int
    calls: int
    acked_events_per_s: float
    ack_latency: Latency
    server_cpu_us_per_event: float | None
    client_cpu_us_per_event: float | None
    usage: Usage = field(metadata=FLAT)
    client_module: str = ""
    push_window: int = 1


def commit_run_from_json(data: dict[str, Any]) -> CommitRun:
    """Read back a :class:`CommitRun` printed by this module."""
    usage = Usage(**{f.name: data.pop(f.name) for f in fields(Usage)})
    latency = Latency(**data.pop("ack_latency"))
    return CommitRun(usage=usage, ack_latency=latency, **data)


class _Pid:
    """A process whose CPU a :class:`Meter` reads (the gateway, by pid)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)


def event_args(i: int, t_ns: int) -> dict[str, Any]:
    """A todo-app sized event's args, as the load generator's (``bench.frames.make_events``)."""
    return {"t": t_ns, "id": f"bench-client-{i}", "text": TEXTS[i % 1024]}


async def follow(spec: dict[str, Any], profiler: cProfile.Profile | None) -> FollowRun:
    from gateway.client import connect

    expected = int(spec["events"])
    async with connect(
        spec["url"], spec["store"], bypass_token=os.environ[BYPASS_ENV], instance_id="bench-follow"
    ) as store:
        got = last = errors = batches = 0
        meter = Meter(_Pid(int(spec["gateway_pid"])))
        started = time.monotonic_ns()
        if profiler is not None:
            profiler.enable()
        async with asyncio.timeout(float(spec["timeout"])):
            stream = store.events(after=None, live=False)
            try:
                async for batch in stream:
                    batches += 1
                    for event in batch.events:
                        if event.seq_num != last + 1:
                            errors += 1
                        last = event.seq_num
                    got += len(batch.events)
                    if got >= expected * FOLLOW_SLACK:
                        break
            finally:
                await stream.aclose()
        if profiler is not None:
            profiler.disable()
        elapsed = (time.monotonic_ns() - started) / 1e9
        usage = meter.read()
    return FollowRun(
        events_received=got,
        order_errors=errors,
        batches=batches,
        seconds=elapsed,
        events_per_s=got / elapsed if elapsed else 0.0,
        client_cpu_us_per_event=usage.generator_cpu_s / got * 1e6 if got else None,
        client_cpu_util=usage.generator_cpu_util,
        server_cpu_us_per_event=usage.server_cpu_s / got * 1e6 if got else None,
        client_module=_client_module(),
    )


async def commit(spec: dict[str, Any], profiler: cProfile.Profile | None) -> CommitRun:
    """``tasks`` tasks commit back to back: ``commit()`` when ``batch`` is 1, else
    ``commit_many`` of ``batch`` events, until ``duration`` or ``max_events``."""
    from gateway.client import connect

    tasks, batch = int(spec["tasks"]), int(spec["batch"])
    duration, max_events = float(spec["duration"]), int(spec["max_events"])
    async with connect(
        spec["url"],
        spec["store"],
        bypass_token=os.environ[BYPASS_ENV],
        instance_id="bench-writer",
        client_id="bench-writer",
        push_window=int(spec.get("push_window", 1)),
    ) as store:
        # Warm-up, outside the window: creates the store and learns its backendId.
        await store.commit_many([(EVENT_NAME, event_args(-i, 0)) for i in range(batch)])
        await asyncio.sleep(0.2)
        issued = 0
        latencies: list[int] = []
        meter = Meter(_Pid(int(spec["gateway_pid"])))
        deadline = time.monotonic() + duration
        if profiler is not None:
            profiler.enable()

        async def writer() -> int:
            nonlocal issued
            acked = 0
            while time.monotonic() < deadline and issued < max_events:
                first = issued
                issued += batch
                t0 = time.monotonic_ns()
                if batch == 1:
                    await store.commit(EVENT_NAME, event_args(first, t0))
                else:
                    await store.commit_many(
                        [(EVENT_NAME, event_args(first + k, t0)) for k in range(batch)]
                    )
                latencies.append(time.monotonic_ns() - t0)
                acked += batch
            return acked

        async with asyncio.timeout(duration + float(spec["timeout"])):
            acked = sum(await asyncio.gather(*(writer() for _ in range(tasks))))
        if profiler is not None:
            profiler.disable()
        usage = meter.read()
    return CommitRun(
        writer="commit()" if batch == 1 else "commit_many()",
        concurrency=tasks,
        batch=batch,
        acked_events=acked,
        calls=len(latencies),
        acked_events_per_s=acked / usage.elapsed_s,
        ack_latency=percentiles(latencies),
        server_cpu_us_per_event=usage.server_cpu_s / acked * 1e6 if acked else None,
        client_cpu_us_per_event=usage.generator_cpu_s / acked * 1e6 if acked else None,
        usage=usage,
        client_module=_client_module(),
        push_window=int(spec.get("push_window", 1)),
    )


def _client_module() -> str:
    import gateway.client

    return str(gateway.client.__file__)


def _write_profile(profiler: cProfile.Profile, path: str) -> None:
    profiler.dump_stats(path)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    with open(path.removesuffix(".pstats") + ".txt", "w") as f:
        f.write(text.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("follow", "commit"):
        print("usage: python -m bench.pyclient follow|commit SPEC_JSON", file=sys.stderr)
        return 2
    mode, spec = args[0], orjson.loads(args[1])
    root = os.environ.get(ROOT_ENV)
    if root:
        sys.path.insert(0, root)
    profile_path = spec.get("profile")
    profiler = cProfile.Profile() if profile_path else None
    run = follow if mode == "follow" else commit
    if spec.get("loop", "uvloop") == "uvloop":
        import uvloop

        result: FollowRun | CommitRun = uvloop.run(run(spec, profiler))
    else:
        result = asyncio.run(run(spec, profiler))
    if profiler is not None:
        _write_profile(profiler, str(profile_path))
    sys.stdout.buffer.write(orjson.dumps(to_json(result)) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
