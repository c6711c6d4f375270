"""The revocation decision as a table (pure: no server, no clock)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.revocation import Revocation, RevocationSet, requested

NOW = 1_800_000_000.0


def by_subject(subject: str, before: float, expires_at: float = NOW + 100) -> Revocation:
    return Revocation(subject=subject, before=before, expires_at=expires_at, created_at=NOW)


def by_jti(token_id: str, expires_at: float = NOW + 100) -> Revocation:
    return Revocation(token_id=token_id, expires_at=expires_at, created_at=NOW)


CASES: list[tuple[str, list[Revocation], str | None, dict[str, Any], bool]] = [
    ("nothing revoked", [], "alice", {"iat": NOW - 5}, False),
    ("issued before the cutoff", [by_subject("alice", NOW)], "alice", {"iat": NOW - 5}, True),
    ("issued at the cutoff", [by_subject("alice", NOW)], "alice", {"iat": NOW}, False),
    ("issued after the cutoff", [by_subject("alice", NOW)], "alice", {"iat": NOW + 5}, False),
    ("no iat: cannot show it is newer", [by_subject("alice", NOW)], "alice", {}, True),
    ("iat not a number", [by_subject("alice", NOW)], "alice", {"iat": "late"}, True),
    ("iat a boolean", [by_subject("alice", NOW)], "alice", {"iat": True}, True),
    ("another subject", [by_subject("alice", NOW)], "bob", {"iat": NOW - 5}, False),
    ("no subject", [by_subject("alice", NOW)], None, {"iat": NOW - 5}, False),
    (
        "the later of two cutoffs",
        [by_subject("alice", NOW - 100), by_subject("alice", NOW)],
        "alice",
        {"iat": NOW - 50},
        True,
    ),
    (
        "an expired entry no longer counts",
        [by_subject("alice", NOW, expires_at=NOW - 1)],
        "alice",
        {"iat": NOW - 5},
        False,
    ),
    ("the revoked jti", [by_jti("t-1")], "alice", {"jti": "t-1", "iat": NOW + 5}, True),
    ("another jti", [by_jti("t-1")], "alice", {"jti": "t-2"}, False),
    ("no jti", [by_jti("t-1")], "alice", {}, False),
    ("an expired jti entry", [by_jti("t-1", expires_at=NOW)], "alice", {"jti": "t-1"}, False),
]


@pytest.mark.parametrize(
    ("entries", "subject", "claims", "revoked"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_covers(
    entries: list[Revocation], subject: str | None, claims: dict[str, Any], revoked: bool
) -> None:
    assert RevocationSet(entries).covers(subject, claims, NOW) is revoked


def test_replace_forgets_what_is_gone() -> None:
    revoked = RevocationSet([by_subject("alice", NOW)])
    revoked.replace([by_jti("t-1")])
    assert not revoked.covers("alice", {"iat": NOW - 5}, NOW)
    assert revoked.covers("alice", {"jti": "t-1"}, NOW)
    assert list(revoked) == [by_jti("t-1")]


@pytest.mark.parametrize(
    "fields",
    [{}, {"subject": "a", "token_id": "t"}, {"subject": "a"}],
    ids=["neither", "both", "subject without before"],
)
def test_an_entry_names_one_thing(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="revocation"):
        Revocation(expires_at=NOW, created_at=NOW, **fields)


def test_round_trip_through_a_row() -> None:
    entry = Revocation(subject="a", before=NOW, expires_at=NOW + 1, created_at=NOW, actor="x")
    assert Revocation.from_row("a", NOW, None, NOW + 1, NOW, "x") == entry
    assert entry.as_json()["subject"] == "a"


DAY = 86400.0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"subject": "a"},
            Revocation(
                subject="a", before=NOW, expires_at=NOW + 31 * DAY, created_at=NOW, actor="op"
            ),
        ),
        (
            {"subject": "a", "before": NOW - DAY},
            Revocation(
                subject="a", before=NOW - DAY, expires_at=NOW + 30 * DAY, created_at=NOW, actor="op"
            ),
        ),
        (
            {"jti": "t"},
            Revocation(token_id="t", expires_at=NOW + 31 * DAY, created_at=NOW, actor="op"),
        ),
        (
            {"jti": "t", "expiresAt": NOW + 60},
            Revocation(token_id="t", expires_at=NOW + 60 + DAY, created_at=NOW, actor="op"),
        ),
        (None, "the body must be a JSON object"),
        ([], "the body must be a JSON object"),
        ({}, 'give a "subject" or a "jti" (a string)'),
        ({"subject": "a", "jti": "t"}, 'give a "subject" or a "jti" (a string)'),
        ({"subject": 5}, 'give a "subject" or a "jti" (a string)'),
        ({"subject": "a", "before": -1}, "before must be seconds since the epoch"),
        ({"subject": "a", "before": True}, "before must be seconds since the epoch"),
        ({"jti": "t", "expiresAt": "soon"}, "expiresAt must be seconds since the epoch"),
    ],
)
def test_requested(body: object, expected: Revocation | str) -> None:
    got = requested(body, now=NOW, max_token_lifetime=30 * DAY, grace_period=DAY, actor="op")
    assert got == expected
