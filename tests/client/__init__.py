"""Tests of gateway.client, the Python client library, against a real gateway."""
