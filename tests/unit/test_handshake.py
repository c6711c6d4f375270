"""URL parsing of sync requests (spec §2): both transports use it before anything else."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl

import pytest

from gateway.admission import (
    MISSING,
    NotSync,
    SyncTarget,
    _form_pairs,
    parse_target,
    redact_target,
)
from gateway.errors import Refusal

LIMITS = {"max_store_id_length": 64, "max_payload_bytes": 1024}


def parse(target: str) -> SyncTarget | NotSync | Refusal:
    return parse_target(target, **LIMITS)


class TestParseTarget:
    def test_observed_double_encoded_payload(self) -> None:
        """The capture of spec §2.1 decodes to the original JSON object."""
        target = (
            "/some/path?storeId=store-1&payload=%257B%2522authToken%2522%253A%2522good%2522%252C"
            "%2522note%2522%253A%2522a%2520b%2526c%253Dd%252F%25C3%25A9%2522%257D&transport=ws"
        )
        parsed = parse(target)
        assert parsed == SyncTarget(
            path="/some/path",
            store_id="store-1",
            transport="ws",
            payload={"authToken": "good", "note": "a b&c=d/é"},
        )

    def test_store_id_form_decoding(self) -> None:
        """'+' is a space, %2F a slash, UTF-8 escapes decode."""
        parsed = parse("/?storeId=a+b%2Fc%C3%A9&transport=http")
        assert isinstance(parsed, SyncTarget)
        assert parsed.store_id == "a b/cé"
        assert parsed.transport == "http"
        assert parsed.payload is MISSING

    def test_any_json_payload(self) -> None:
        parsed = parse("/?storeId=s&payload=%2522x%2522&transport=ws")
        assert isinstance(parsed, SyncTarget)
        assert parsed.payload == "x"

    def test_no_sync_params(self) -> None:
        parsed = parse("/healthz")
        assert isinstance(parsed, NotSync)
        assert parsed.path == "/healthz"

    @pytest.mark.parametrize(
        ("target", "code"),
        [
            ("/?transport=ws", "MISSING_STORE_ID"),
            ("/?storeId=&transport=ws", "BAD_STORE_ID"),
            ("/?storeId=" + "x" * 65 + "&transport=ws", "BAD_STORE_ID"),
            ("/?storeId=s&transport=foo", "BAD_TRANSPORT"),
            ("/?storeId=s", "BAD_TRANSPORT"),
            ("/?storeId=s&payload=%257Bnot&transport=ws", "BAD_PAYLOAD"),
            ("/?storeId=s&payload=%25FF&transport=ws", "BAD_PAYLOAD"),
            ("/?storeId=s&payload=" + "%2522" + "a" * 2000 + "%2522&transport=ws", "BAD_PAYLOAD"),
            ("/?storeId=s&storeId=t&transport=ws", "BAD_REQUEST"),
            ("/?storeId=%FF&transport=ws", "BAD_REQUEST"),
        ],
    )
    def test_refusals(self, target: str, code: str) -> None:
        """Each malformed request gets a 400 with a stable code."""
        parsed = parse(target)
        assert isinstance(parsed, Refusal)
        assert (parsed.status, parsed.code) == (400, code)

    def test_redaction_drops_the_query(self) -> None:
        """Logs never see the query, which carries the token."""
        assert redact_target("/sync?storeId=s&payload=secret") == "/sync?…"
        assert "secret" not in redact_target("/a?payload=secret")


def test_form_pairs_read_queries_as_parse_qsl_does() -> None:
    """The handshake's own query decoding gives parse_qsl's pairs (keep_blank_values,
    strict UTF-8), on queries built from the pieces that trip decoders up."""
    pieces = ["a", "b", "%25", "%2525", "+", "=", "&", ";", "%2F", "%C3%A9", "%ZZ", "%", "%2"]
    pieces += ["%FF", "é", " ", "#"]
    rng = random.Random(16)  # noqa: S311 - reproducible test data
    for _ in range(20_000):
        query = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        try:
            expected: object = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            expected = UnicodeDecodeError
        try:
            got: object = _form_pairs(query)
        except UnicodeDecodeError:
            got = UnicodeDecodeError
        assert got == expected, query
