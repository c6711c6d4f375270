"""The sizes of every measurement: the full run's, and the smoke run's toy ones."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    # fan-out measurements; medians are reported.
    rounds: int = 3
    # 1. handshakes
    hs_duration: float = 2.0
    hs_max: int = 6000
    hs_concurrency: int = 32
    hs_stores: int = 10
    # 2. fan-out
    fan_stores: int = 10
    fan_subscribers: int = 100
    fan_batch: int = 1
    fan_rate: float = 10.0  # pushes/s per store in the paced phase (10,000 events/s)
    # The paced phase runs in short slices alternating between the servers; each server
    # keeps the share ``fan_keep`` of its slices with the least foreign CPU load.
    fan_slices: int = 8
    fan_slice_s: float = 1.5
    fan_keep: float = 0.5
    fan_saturated_s: float = 4.0
    fan_saturated_rounds: int = 2
    fan_window: int = 16
    # 3b. push rules: durable pushes without / with 10 rules and 20 event schemas
    rules_s: float = 2.5
    rules_rounds: int = 6
    # 3. durable pushes
    dur_pushers: int = 32
    dur_batch: int = 10
    dur_s: float = 5.0
    dur_single_batch: int = 1  # a second run with single-event pushes (0 skips it)
    # 4. idle
    idle_connections: int = 10_000
    idle_stores: int = 10
    idle_warmup: int = 200
    # 5. catch-up
    catchup_events: int = 100_000
    catchup_runs: int = 3
    # compression study (baseline with and without permessage-deflate)
    comp_connections: int = 2000
    comp_stores: int = 2
    comp_subscribers: int = 100
    comp_rate: float = 20.0  # pushes/s per store, 10 events each
    comp_paced_s: float = 3.0
    # 6. two-node fan-out (two gateways on one fresh PostgreSQL schema; skipped without one)
    mn_stores: int = 4
    mn_subscribers: int = 50  # per store, split evenly across the two nodes
    # Single-event pushes/s per store, all through node 1: 200 pushes/s, 10,000 delivered
    # events/s (the single-node fan-out's load). One push is in flight per pusher and acks
    # take ~10 ms (a PostgreSQL commit), so far above ~70/s per store the pushers fall behind.
    mn_rate: float = 50.0
    mn_s: float = 4.0
    # 8. PostgreSQL throughput: two gateways, single-event pushers on pg_stores stores (one
    # each, back to back) and pg_hot clients on one hot store, for pg_s seconds; then the hot
    # store's clients alone for pg_s seconds.
    pg_stores: int = 200
    pg_hot: int = 16
    pg_s: float = 10.0
    # 9. C100k on one process (issue 16): as many authenticated live pulls as the file limits
    # of both processes allow (0: computed from RLIMIT_NOFILE, ~19,800 at a 20,000 limit),
    # over c100k_stores stores plus one hot store with c100k_hot subscribers, from
    # c100k_sources loopback addresses, held for c100k_hold_s while the hot store is pushed
    # c100k_rate single-event pushes/s, in c100k_slices slices (c100k_keep of them kept).
    c100k_connections: int = 0
    c100k_reserve: int = 150  # file descriptors left to both processes' own needs
    c100k_stores: int = 1000
    c100k_hot: int = 1000
    c100k_sources: int = 64
    c100k_warmup: int = 200
    c100k_hold_s: float = 60.0
    c100k_slices: int = 12
    c100k_keep: float = 0.5
    c100k_rate: float = 10.0
    # 7. the Python client (gateway.client) against the load generator
    client_events: int = 100_000  # the store the follow measurement reads
    client_follow_runs: int = 3
    client_tasks: int = 32  # tasks calling commit() concurrently
    client_batch: int = 100  # events per commit_many()
    client_batch_tasks: int = 4  # tasks calling commit_many() concurrently
    client_window: int = 16  # the generator's pushes in flight (its pipelined writer)
    # The client's push_window for commit_many() (a store's only writer may pipeline).
    client_push_window: int = 4
    client_commit_s: float = 1.5
    client_commit_max: int = 500_000  # events per commit window, whatever the rate
    client_rounds: int = 2
    # 9. reconnect storm: live pulls on storm_stores stores; the server restarted under them
    # (capped by the open-file limit); on the gateway one event per store every
    # storm_push_interval s through the storm; storm_warm_s between connecting and the
    # SIGTERM; clients still not live storm_within_s after it count as failed.
    storm_clients: int = 19_500
    storm_stores: int = 100
    storm_push_interval: float = 2.0
    storm_warm_s: float = 2.0
    storm_within_s: float = 90.0
    # The gateway's limits.max_pending_handshakes in the storm (-1: its default).
    storm_max_pending: int = -1
    # The gateway's server.backlog in the storm (-1: its default).
    storm_backlog: int = -1
    concurrency: int = 64
    settle_s: float = 1.0  # wait before reading RSS


SMOKE = Sizes(
    hs_duration=0.3,
    hs_max=40,
    hs_concurrency=4,
    hs_stores=2,
    fan_stores=2,
    fan_subscribers=5,
    fan_batch=2,
    fan_rate=20.0,
    fan_slices=2,
    fan_slice_s=0.3,
    fan_saturated_s=0.3,
    dur_pushers=2,
    dur_batch=5,
    dur_s=0.3,
    dur_single_batch=0,
    rules_s=0.3,
    rules_rounds=1,
    idle_connections=50,
    idle_stores=2,
    idle_warmup=5,
    catchup_events=1000,
    catchup_runs=1,
    comp_connections=20,
    comp_stores=1,
    comp_subscribers=5,
    comp_rate=10.0,
    comp_paced_s=0.3,
    mn_stores=2,
    mn_subscribers=4,
    mn_rate=20.0,
    mn_s=0.3,
    pg_stores=4,
    pg_hot=2,
    pg_s=0.3,
    c100k_connections=80,
    c100k_stores=4,
    c100k_hot=10,
    c100k_sources=4,
    c100k_warmup=5,
    c100k_hold_s=0.6,
    c100k_slices=2,
    c100k_rate=20.0,
    client_events=1000,
    client_follow_runs=1,
    client_tasks=4,
    client_batch=5,
    client_batch_tasks=2,
    client_window=4,
    client_commit_s=0.3,
    client_rounds=1,
    storm_clients=40,
    storm_stores=4,
    storm_push_interval=0.2,
    storm_warm_s=0.3,
    storm_within_s=20.0,
    rounds=1,
    fan_saturated_rounds=1,
    concurrency=8,
    settle_s=0.2,
)
