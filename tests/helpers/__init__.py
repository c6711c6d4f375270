"""What the tests share besides fixtures (those live in the conftest.py files).

- ``timeouts``: ``TIMEOUT_UNIT`` and bounded waits.
- ``ci``: CI detection; skip locally, fail under ``CI=true``.
- ``urls``: the one builder of sync URLs (``?storeId=…&payload=…&transport=…``).
- ``wire``: RPC frame builders, parsers and assertions on frames.
- ``clients``: ``RpcClient``, a raw-protocol WebSocket client; raw sockets.
- ``http_client``: the HTTP transport from the client side.
- ``harness``: ``GatewayHarness``, an in-process gateway on 127.0.0.1:0.
- ``daemon``: ``Daemon``, a ``gateway serve`` subprocess; ``run_cli``.
- ``notify``: the systemd end of ``NOTIFY_SOCKET``.
- ``keys``: key material and JWT building blocks.
- ``postgres``: the test PostgreSQL server.
- ``follower``: a ``gateway.client`` follower in a background task, for waits on its events.
- ``fakes``: a recording ``Outbox`` (the hub's connection edge) and engine-level batches.
"""
