"""The measurement rigs, each run the same way against the gateway and the baseline (the
two-node fan-out runs on gateways only). Every rig takes a running
:class:`bench.procs.Server` and returns a frozen result dataclass (``bench.results``).

1. ``handshake`` (1b. ``handshake_tls``: the same over wss://), 2. ``fanout``, 3. ``durable``,
4. ``idle``, 5. ``catchup``, 6. ``multinode``, 7. ``client`` (the Python client next to the load
generator, on gateways only); ``common`` and ``streams`` hold what they share.
"""
