"""The operator's control over a running gateway: stores, sessions, their data.

:mod:`gateway.admin.service` holds the actions (transport-neutral); the admin API and the CLI
are thin layers over it.
"""
