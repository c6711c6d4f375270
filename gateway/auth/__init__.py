"""Authentication and its limits.

- :mod:`.policy`: the decision table and JWT verification, pure (no I/O, no clock).
- :mod:`.gate`: the ``validate_payload`` hook: keys, JWKS, lockout, the security log.
- :mod:`.limits`: bounded, clock-injected limiters (failed-auth lockout, push rate).
"""
