"""Token revocation: the entries an operator records, and the decision whether they cover a
verified token. Pure (no I/O, no clock): callers pass the time.

An entry revokes either one token (its ``jti``) or every token of a subject issued before a
time (``iat < before``; a token of that subject without ``iat`` cannot show it is newer and
is covered too). An entry is kept until ``expires_at``, when the tokens it covers would have
expired anyway; the store forgets it then.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation:
    """One entry. Exactly one of ``subject`` and ``token_id`` is set.

    Attributes:
        subject: Revoke this subject's tokens issued before ``before``.
        before: The ``iat`` cutoff (seconds since the epoch) of a subject revocation.
        token_id: Revoke the one token with this ``jti``.
        expires_at: When the entry can be forgotten (seconds since the epoch).
        created_at: When it was recorded.
        actor: Who recorded it (for the audit trail).
    """

    subject: str | None = None
    before: float | None = None
    token_id: str | None = None
    expires_at: float
    created_at: float
    actor: str = ""

    def __post_init__(self) -> None:
        if (self.subject is None) == (self.token_id is None):
            raise ValueError("a revocation names a subject or a token id, not both or neither")
        if self.subject is not None and self.before is None:
            raise ValueError("a subject revocation needs its `before` time")

    @classmethod
    def from_row(
        cls,
        subject: str | None,
        before: float | None,
        token_id: str | None,
        expires_at: float,
        created_at: float,
        actor: str,
    ) -> Revocation:
        """An entry from a stored row (both backends store these columns in this order)."""
        return cls(
            subject=subject,
            before=None if before is None else float(before),
            token_id=token_id,
            expires_at=float(expires_at),
            created_at=float(created_at),
            actor=actor,
        )

    def as_json(self) -> dict[str, Any]:
        """The entry as the admin API shows it."""
        return {
            "subject": self.subject,
            "before": self.before,
            "jti": self.token_id,
            "expiresAt": self.expires_at,
            "createdAt": self.created_at,
            "actor": self.actor,
        }


class RevocationSet:
    """The entries in force on this node, indexed for the handshake's check."""

    def __init__(self, entries: Iterable[Revocation] = ()) -> None:
        self._before: dict[str, float] = {}
        self._token_ids: set[str] = set()
        self._entries: list[Revocation] = []
        self.replace(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Revocation]:
        return iter(tuple(self._entries))

    def replace(self, entries: Iterable[Revocation]) -> None:
        """Use exactly ``entries`` from now on (what the store holds)."""
        self._before.clear()
        self._token_ids.clear()
        self._entries = []
        for entry in entries:
            self.add(entry)

    def add(self, entry: Revocation) -> None:
        self._entries.append(entry)
        if entry.token_id is not None:
            self._token_ids.add(entry.token_id)
        elif entry.subject is not None and entry.before is not None:
            self._before[entry.subject] = max(entry.before, self._before.get(entry.subject, 0.0))

    def covers(self, subject: str | None, claims: Mapping[str, Any], now: float) -> bool:
        """Whether a verified token of ``subject`` with ``claims`` is revoked at ``now``."""
        if not self._entries:
            return False
        token_id = claims.get("jti")
        if isinstance(token_id, str) and token_id in self._token_ids:
            return any(e.token_id == token_id and e.expires_at > now for e in self._entries)
        if subject is None or subject not in self._before:
            return False
        issued = claims.get("iat")
        cutoff = max(
            (
                e.before
                for e in self._entries
                if e.subject == subject and e.before is not None and e.expires_at > now
            ),
            default=None,
        )
        if cutoff is None:
            return False
        return not isinstance(issued, int | float) or isinstance(issued, bool) or issued < cutoff


def requested(
    body: object,
    *,
    now: float,
    max_token_lifetime: float,
    grace_period: float,
    actor: str,
) -> Revocation | str:
    """The entry an operator's request asks for, or why the request is wrong.

    ``body`` is ``{"subject": U, "before"?: T}`` (tokens of U issued before T, default
    ``now``) or ``{"jti": J, "expiresAt"?: T}`` (times in seconds since the epoch). The entry
    is kept while the tokens it covers could still be accepted: ``max_token_lifetime`` after
    the cutoff (or until the token's ``expiresAt``), plus ``grace_period``.
    """
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    subject, token_id = body.get("subject"), body.get("jti")
    if (subject is None) == (token_id is None) or not isinstance(subject or token_id, str):
        return 'give a "subject" or a "jti" (a string)'
    times: dict[str, float | None] = {}
    for key in ("before", "expiresAt"):
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            return f"{key} must be seconds since the epoch"
        times[key] = None if value is None else float(value)
    if subject is not None:
        cutoff = now if times["before"] is None else times["before"]
        return Revocation(
            subject=subject,
            before=cutoff,
            expires_at=cutoff + max_token_lifetime + grace_period,
            created_at=now,
            actor=actor,
        )
    expires = times["expiresAt"]
    until = now + max_token_lifetime if expires is None else expires
    return Revocation(
        token_id=token_id, expires_at=until + grace_period, created_at=now, actor=actor
    )
