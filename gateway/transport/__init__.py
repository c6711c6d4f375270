"""The network edge: one listening socket for the WebSocket and the HTTP transport.

- :mod:`.listener`: accepts connections, routes each by its request method, answers
  handshakes through :func:`gateway.admission.admit`, and shuts down.
- :mod:`.ws`: one WebSocket connection on websockets' Sans-I/O ``ServerProtocol``.
- :mod:`.httpconn`: one HTTP/1.1 connection of the HTTP transport.
- :mod:`.sessions`: open WebSocket sessions: their logs, counters, keepalive and expiry
  sweeps, and the re-check after a reload.
- :mod:`.endpoints`: the plain endpoints (``/``, ``/healthz``, ``/readyz``, ``/metrics``,
  ``/stats``).
- :mod:`.answer`: the transport-neutral HTTP answer they share.
"""
