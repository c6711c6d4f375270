"""Push rules: who may write which events to which stores. Pure: no I/O, no clock.

The configuration (``[rules]`` and its ``[[rules.push]]`` entries, README "Push rules and
validation") is plain data; :func:`compile_rules` turns it, once per load or reload, into
matchers (precompiled regular expressions for the globs, frozensets for the claim values), and
:func:`decide` judges one pushed batch against them:

1. A read-only credential (its ``read_only_claim`` holds one of ``read_only_values``, as a
   string or in a list) may pull but never push: ``READ_ONLY``.
2. Each event of the batch is matched against the rules in order; the first rule whose
   ``sessions``, ``stores``, ``subjects``, ``claims`` and ``events`` all match decides it.
   No matching rule: allowed. One denied event refuses the whole batch: ``PUSH_FORBIDDEN``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.auth import policy as auth
from gateway.errors import ConfigError

Action = Literal["allow", "deny"]

# What kind of session pushes (matched by a rule's `sessions`), from the auth reason.
SESSION_KINDS: Final = ("jwt", "bypass", "dev", "anonymous")
# Bypass sessions (internal services) are restricted only by rules that name them.
DEFAULT_SESSIONS: Final = ("jwt", "dev", "anonymous")
_KIND_OF_REASON: Final = {
    auth.R_JWT: "jwt",
    auth.R_GRACE: "jwt",
    auth.R_BYPASS: "bypass",
    auth.R_DEV: "dev",
}

# The stable codes a refused push carries at the start of its UnknownError's `note`, and the
# `gateway_pushes_rejected_total` reasons they are counted under.
READ_ONLY: Final = "READ_ONLY"
PUSH_FORBIDDEN: Final = "PUSH_FORBIDDEN"
# Event validation (gateway.validation) and the push hook (gateway.hooks).
EVENT_INVALID: Final = "EVENT_INVALID"
EVENT_UNKNOWN: Final = "EVENT_UNKNOWN"
HOOK_REFUSED: Final = "HOOK_REFUSED"
# A pull refused by the on_pull hook (counted in gateway_pulls_rejected_total).
PULL_FORBIDDEN: Final = "PULL_FORBIDDEN"
METRIC_REASONS: Final = {
    READ_ONLY: "read_only",
    PUSH_FORBIDDEN: "forbidden",
    EVENT_INVALID: "invalid",
    EVENT_UNKNOWN: "unknown_event",
    HOOK_REFUSED: "hook",
    PULL_FORBIDDEN: "hook",
}
# How long a message from a validator or a hook may be in a refusal (characters).
MAX_MESSAGE: Final = 200


# ---------------------------------------------------------------------------------------------
# Configuration (plain data; read by gateway.configfile, shown by check-config)


@dataclass(frozen=True, slots=True, kw_only=True)
class PushRule:
    """One ``[[rules.push]]`` entry. Every given condition must hold for it to match."""

    action: Action
    # Globs (fnmatch: *, ?, [abc]) on the storeId, the event name and the subject.
    stores: tuple[str, ...] = ("*",)
    events: tuple[str, ...] = ("*",)
    subjects: tuple[str, ...] = ("*",)
    # JWT claim -> allowed values; a claim holding a list matches if any element is allowed.
    claims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The kinds of session the rule applies to: jwt, bypass, dev, anonymous.
    sessions: tuple[str, ...] = DEFAULT_SESSIONS
    # A label for logs and refusal messages.
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RulesConfig:
    # A JWT whose `read_only_claim` holds one of `read_only_values` (a string, or a list
    # containing one) may pull but never push. "" disables the check.
    read_only_claim: str = ""
    read_only_values: tuple[str, ...] = ("read",)
    # First match wins per event; no match: allowed.
    push: tuple[PushRule, ...] = ()
    # A JSON file mapping event names to the JSON Schema of their `args` ("" disables
    # validation); read and compiled at start and on reload (gateway.validation).
    event_schemas: str = ""
    # Refuse events whose name has no schema in the file.
    strict_events: bool = False


def validate_rules(config: RulesConfig) -> None:
    """Raise ConfigError naming the key when a rule cannot mean what it says."""
    if config.read_only_claim and not config.read_only_values:
        raise ConfigError("rules.read_only_values: at least one value with read_only_claim")
    if config.strict_events and not config.event_schemas:
        raise ConfigError("rules.strict_events: needs a schema file in rules.event_schemas")
    for index, rule in enumerate(config.push):
        where = f"rules.push[{index}]"
        for key in ("stores", "events", "subjects"):
            patterns: tuple[str, ...] = getattr(rule, key)
            if not patterns or any(not p for p in patterns):
                raise ConfigError(f"{where}.{key}: non-empty patterns ('*' matches any)")
        if not rule.sessions:
            raise ConfigError(f"{where}.sessions: at least one of {', '.join(SESSION_KINDS)}")
        for kind in rule.sessions:
            if kind not in SESSION_KINDS:
                raise ConfigError(
                    f"{where}.sessions: {kind!r} is not one of {', '.join(SESSION_KINDS)}"
                )
        for claim, values in rule.claims.items():
            if not claim:
                raise ConfigError(f"{where}.claims: a claim needs a name")
            if not values:
                raise ConfigError(f"{where}.claims.{claim}: at least one allowed value")


# ---------------------------------------------------------------------------------------------
# Compiled form

Match = Callable[[str], object]


def _globs(patterns: Sequence[str]) -> Match | None:
    """One matcher for a list of globs (case-sensitive), or None when one of them is ``*``."""
    if "*" in patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    label: str
    allow: bool
    sessions: frozenset[str]
    store: Match | None
    event: Match | None
    subject: Match | None
    claims: tuple[tuple[str, frozenset[str]], ...]


@dataclass(frozen=True, slots=True)
class PushRules:
    """The rules in force, compiled (one object, swapped whole on reload)."""

    rules: tuple[CompiledRule, ...] = ()
    read_only_claim: str = ""
    read_only_values: frozenset[str] = frozenset()
    # The JWT claims a session must keep for the rules (the rest are dropped at admission),
    # or all of them (a hook is configured: it gets the claims).
    claim_names: frozenset[str] = frozenset()
    all_claims: bool = False

    @property
    def active(self) -> bool:
        """Whether any push may be refused at all (else :func:`decide` is skipped)."""
        return bool(self.rules or self.read_only_claim)


def compile_rules(config: RulesConfig) -> PushRules:
    """The matchers of ``config`` (validated); raises ConfigError like :func:`validate_rules`."""
    validate_rules(config)
    compiled = []
    names: set[str] = set()
    for index, rule in enumerate(config.push):
        label = f"rules.push[{index}]" + (f" ({rule.name})" if rule.name else "")
        compiled.append(
            CompiledRule(
                index=index,
                label=label,
                allow=rule.action == "allow",
                sessions=frozenset(rule.sessions),
                store=_globs(rule.stores),
                event=_globs(rule.events),
                subject=_globs(rule.subjects),
                claims=tuple((c, frozenset(v)) for c, v in rule.claims.items()),
            )
        )
        names.update(rule.claims)
    if config.read_only_claim:
        names.add(config.read_only_claim)
    return PushRules(
        rules=tuple(compiled),
        read_only_claim=config.read_only_claim,
        read_only_values=frozenset(config.read_only_values),
        claim_names=frozenset(names),
    )


# ---------------------------------------------------------------------------------------------
# The decision


def session_kind(reason: str) -> str:
    """The rule ``sessions`` kind of an admission reason (``*_as_anonymous`` is anonymous)."""
    return _KIND_OF_REASON.get(reason, "anonymous")


def keep_claims(claims: Mapping[str, object], rules: PushRules) -> dict[str, object] | None:
    """The part of a verified token's claims the rules (or a hook) read (None: none)."""
    if rules.all_claims:
        return dict(claims) or None
    kept = {name: claims[name] for name in rules.claim_names if name in claims}
    return kept or None


def _texts(value: object) -> tuple[str, ...]:
    """A claim's values as text: a string, a list's strings; true/false and integers as their
    JSON text. Anything else (objects, null, fractions) matches nothing."""
    if isinstance(value, list):
        return tuple(text for item in value for text in _texts_scalar(item))
    return _texts_scalar(value)


def _texts_scalar(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, int):
        return (str(value),)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return (str(int(value)),)
    return ()


def _holds(claims: Mapping[str, object] | None, name: str, allowed: frozenset[str]) -> bool:
    if claims is None or name not in claims:
        return False
    return any(text in allowed for text in _texts(claims[name]))


def short(name: str) -> str:
    """An event name for a message or a log line: a client chose it, so it is bounded and
    its control characters (a newline would forge a log line) are escaped."""
    if len(name) > 120:
        name = name[:120] + "…"
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def bounded(text: str) -> str:
    """A message from a validator or a hook for a refusal note or a log line: one line,
    bounded in length, control characters escaped."""
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "…"
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a batch is refused: the code, a message for the client, what matched."""

    code: str
    message: str
    event: str | None = None
    position: int | None = None
    rule: int | None = None

    @property
    def note(self) -> str:
        """The UnknownError ``note``: the stable code first."""
        return f"{self.code}: {self.message}"

    @property
    def metric_reason(self) -> str:
        return METRIC_REASONS[self.code]


def decide(
    rules: PushRules,
    *,
    store_id: str,
    kind: str,
    subject: str,
    claims: Mapping[str, object] | None,
    names: Sequence[str],
) -> Refused | None:
    """Judge a batch of events (their ``names``, in order) pushed to ``store_id`` by a
    session of ``kind`` and ``subject`` holding ``claims``; None when it may be stored."""
    claim = rules.read_only_claim
    if claim and _holds(claims, claim, rules.read_only_values):
        return Refused(
            READ_ONLY,
            f"this credential is read-only (claim {claim!r}): it may pull, never push",
        )
    applicable = [
        rule
        for rule in rules.rules
        if kind in rule.sessions
        and (rule.store is None or rule.store(store_id))
        and (rule.subject is None or rule.subject(subject))
        and all(_holds(claims, name, allowed) for name, allowed in rule.claims)
    ]
    if all(rule.allow for rule in applicable):
        return None
    decided: dict[str, CompiledRule | None] = {}
    for position, name in enumerate(names):
        if name in decided:
            first = decided[name]
        else:
            first = next((r for r in applicable if r.event is None or r.event(name)), None)
            decided[name] = first
        if first is not None and not first.allow:
            return Refused(
                PUSH_FORBIDDEN,
                f"event '{short(name)}' (batch[{position}]) is denied by {first.label}",
                event=short(name),
                position=position,
                rule=first.index,
            )
    return None
