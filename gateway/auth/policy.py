"""Authentication policy, pure: credentials in, a decision out. No I/O, no clock.

The decision table (README, "Authentication"): what a sync request is allowed to do given its
credential and the mode (``require_auth``). JWTs are parsed by :mod:`gateway.auth.jws` and
their signatures checked by pyjwt's algorithms, pinned by configuration; this module checks
the claims (``exp``, ``nbf``, ``aud``, ``iss``, the subject, ``type``) itself against an
injected ``now``, so that an expired token whose signature and other claims are valid can be
told apart (and given the grace window) from a token that is invalid in any other way.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.admission import MISSING
from gateway.auth import jws
from gateway.errors import Refusal, RefusalCode

# Accepted-request reasons (stable: logs and metrics use them).
R_JWT: Final = "jwt"
R_GRACE: Final = "jwt_grace"
R_DEV: Final = "dev_token"
R_BYPASS: Final = "bypass"
R_ANONYMOUS: Final = "anonymous"
R_EXPIRED_ANON: Final = "expired_as_anonymous"
R_INVALID_ANON: Final = "invalid_as_anonymous"
R_BYPASS_ANON: Final = "bad_bypass_as_anonymous"

SUBJECT_SERVER: Final = "server"
SUBJECT_DEV: Final = "dev"
SUBJECT_ANONYMOUS: Final = "anonymous"

_INSTANCE_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What a request presents, extracted from its payload, query, headers and cookies."""

    instance_id: str | None = None
    token: str | None = None
    token_source: str | None = None
    bypass: str | None = None


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag of a token for logs (never the token itself)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:10]


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def _bearer(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def extract_credentials(
    payload: object,
    *,
    query_token: str | None,
    headers: Mapping[str, str],
    cookie_name: str,
    max_token_bytes: int,
    production: bool,
) -> Credentials | Refusal:
    """Read the credential of a sync request.

    Token sources, first present wins: payload ``authToken``, query ``token``,
    ``Authorization: Bearer``, the configured cookie.
    """
    instance_id: str | None = None
    token: str | None = None
    source: str | None = None
    bypass: str | None = None
    if payload is not MISSING and payload is not None and not isinstance(payload, dict):
        # The protocol allows any JSON value; only production insists on our object shape.
        if production:
            return Refusal(code=RefusalCode.BAD_PAYLOAD, message="payload must be a JSON object")
        payload = None
    if isinstance(payload, dict):
        raw_instance = payload.get("instanceId")
        if raw_instance is not None:
            if not isinstance(raw_instance, str) or not _INSTANCE_ID.fullmatch(raw_instance):
                return Refusal(
                    code=RefusalCode.BAD_PAYLOAD,
                    message="instanceId must be 1-128 characters of [A-Za-z0-9._:@+=-]",
                )
            instance_id = raw_instance
        for key in ("authToken", "serverBypass"):
            value = payload.get(key)
            if value is not None and not isinstance(value, str):
                return Refusal(code=RefusalCode.BAD_PAYLOAD, message=f"{key} must be a string")
        if payload.get("authToken"):
            token, source = payload["authToken"], "payload"
        if payload.get("serverBypass"):
            bypass = payload["serverBypass"]
    if token is None and query_token:
        token, source = query_token, "query"
    if token is None and "authorization" in headers:
        bearer = _bearer(headers["authorization"])
        if bearer is not None:
            token, source = bearer, "header"
    if token is None and cookie_name and "cookie" in headers:
        value = _cookie(headers["cookie"], cookie_name)
        if value:
            token, source = value, "cookie"
    for secret in (token, bypass):
        if secret is not None and len(secret.encode()) > max_token_bytes:
            return Refusal(
                code=RefusalCode.TOKEN_TOO_LARGE,
                message=f"credentials are limited to {max_token_bytes} bytes",
            )
    if production and instance_id is None and (token is not None or bypass is not None):
        # Without any credential the answer is MISSING_TOKEN (the decision table's row).
        return Refusal(code=RefusalCode.BAD_PAYLOAD, message="instanceId is required")
    return Credentials(instance_id=instance_id, token=token, token_source=source, bypass=bypass)


# ---------------------------------------------------------------------------------------------
# JWT verification


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtRules:
    algorithms: tuple[str, ...]
    audience: str = ""
    issuer: str = ""
    subject_claim: str = "sub"
    required_type: str = ""
    leeway: float = 10.0


@dataclass(frozen=True, slots=True)
class Verified:
    subject: str
    claims: dict[str, Any]
    expires_at: float


@dataclass(frozen=True, slots=True)
class Expired:
    """Signature and every other claim valid; only ``exp`` has passed."""

    subject: str
    claims: dict[str, Any]
    expires_at: float


@dataclass(frozen=True, slots=True)
class Invalid:
    why: str


Verification = Verified | Expired | Invalid


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _claims_error(claims: Mapping[str, Any], rules: JwtRules) -> str | None:
    """What is wrong with the claims pyjwt used to check (RFC 7519 §4.1), or None.

    ``exp`` is required; ``aud`` and ``iss`` are checked when configured (``aud`` may be a
    string or a list of strings, one of them ours); ``sub`` and ``jti``, when present, must be
    strings.
    """
    if "exp" not in claims:
        return "missing claim exp"
    if rules.audience:
        if "aud" not in claims:
            return "missing claim aud"
        audience = claims["aud"]
        if isinstance(audience, str):
            audience = [audience]
        if (
            not isinstance(audience, list)
            or not all(isinstance(a, str) for a in audience)
            or rules.audience not in audience
        ):
            return "wrong audience"
    if rules.issuer:
        if "iss" not in claims:
            return "missing claim iss"
        if claims["iss"] != rules.issuer:
            return "wrong issuer"
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            return "malformed token"
    return None


def verify_jwt(
    token: str,
    keys: Sequence[Any],
    rules: JwtRules,
    now: float,
    compact: jws.Compact | None = None,
) -> Verification:
    """Verify ``token`` against candidate ``keys`` (all for the header's algorithm family).

    The algorithm must be one of ``rules.algorithms`` and a key must have signed the token
    with that very algorithm, so the header cannot choose another (``none``, or HS256 keyed
    with a public key). ``compact`` is the token already parsed, when the caller has it.
    """
    if compact is None:
        compact = jws.parse(token)
    if compact is None:
        return Invalid("malformed token")
    algorithm = compact.header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in rules.algorithms:
        return Invalid("algorithm not allowed")
    if not keys:
        return Invalid("no key for this token")
    if not any(jws.signed_by(compact, algorithm, key) for key in keys):
        return Invalid("bad signature")
    claims = compact.claims
    error = _claims_error(claims, rules)
    if error is not None:
        return Invalid(error)
    expires_at = _number(claims.get("exp"))
    if expires_at is None:
        return Invalid("exp must be a number")
    if "nbf" in claims:
        not_before = _number(claims["nbf"])
        if not_before is None:
            return Invalid("nbf must be a number")
        if not_before - rules.leeway > now:
            return Invalid("token not valid yet")
    subject = claims.get(rules.subject_claim)
    if isinstance(subject, int) and not isinstance(subject, bool):
        subject = str(subject)
    if not isinstance(subject, str) or not subject:
        return Invalid(f"missing claim {rules.subject_claim}")
    if rules.required_type and claims.get("type") != rules.required_type:
        return Invalid("wrong token type")
    if expires_at + rules.leeway < now:
        return Expired(subject, claims, expires_at)
    return Verified(subject, claims, expires_at)


# ---------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    require_auth: bool
    grace_period: float
    dev_tokens: tuple[str, ...] = ()
    bypass_token: str = ""
    stores_claim: str = ""
    # SHA-256 digests of the secrets above, computed once (every handshake compares them).
    _dev_digests: tuple[bytes, ...] = field(init=False, default=())
    _bypass_digest: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "_dev_digests", tuple(_digest(t) for t in self.dev_tokens))
        digest = _digest(self.bypass_token) if self.bypass_token else b""
        object.__setattr__(self, "_bypass_digest", digest)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome for one request: allowed (with subject) or a refusal, and why."""

    allowed: bool
    reason: str
    subject: str | None = None
    denied: Refusal | None = None
    warn: bool = False
    expires_at: float | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _matches(candidate: str, digests: Sequence[bytes]) -> bool:
    """Constant-time comparison of digests, which also hides the secrets' lengths."""
    digest = _digest(candidate)
    found = False
    for known in digests:
        found |= hmac.compare_digest(digest, known)
    return found


def _accept(reason: str, subject: str, *, warn: bool = False, **kw: Any) -> Decision:
    return Decision(allowed=True, reason=reason, subject=subject, warn=warn, **kw)


def _deny(code: RefusalCode, message: str) -> Decision:
    return Decision(
        allowed=False, reason=code, denied=Refusal(code=code, message=message), warn=True
    )


def is_dev_token(token: str, policy: Policy) -> bool:
    return _matches(token, policy._dev_digests)


def decide(
    credentials: Credentials,
    verification: Verification | None,
    policy: Policy,
    now: float,
    *,
    bypass_network: bool = True,
) -> Decision:
    """Apply the decision table. ``verification`` is the JWT result when a token that is not
    a dev token was presented, else None. ``bypass_network`` says whether the client's address
    is one the bypass token is accepted from (``auth.bypass_allowed_networks``); elsewhere the
    right bypass token is refused as a wrong one would be."""
    production = policy.require_auth
    if credentials.bypass is not None:
        matches = _matches(credentials.bypass, (policy._bypass_digest,))
        if policy.bypass_token and matches and bypass_network:
            return _accept(R_BYPASS, SUBJECT_SERVER)
        if production:
            return _deny(RefusalCode.BYPASS_REJECTED, "the server bypass token is not valid")
        return _accept(R_BYPASS_ANON, SUBJECT_ANONYMOUS, warn=True)
    token = credentials.token
    if token is None:
        if production:
            return _deny(RefusalCode.MISSING_TOKEN, "an auth token is required")
        return _accept(R_ANONYMOUS, SUBJECT_ANONYMOUS)
    if is_dev_token(token, policy):
        if production:
            return _deny(RefusalCode.DEV_TOKEN_REJECTED, "development tokens are not accepted")
        return _accept(R_DEV, SUBJECT_DEV)
    if isinstance(verification, Verified):
        return _accept(
            R_JWT,
            verification.subject,
            expires_at=verification.expires_at + policy.grace_period,
            claims=verification.claims,
        )
    if isinstance(verification, Expired):
        if policy.grace_period > 0 and now - verification.expires_at <= policy.grace_period:
            return _accept(
                R_GRACE,
                verification.subject,
                warn=True,
                expires_at=verification.expires_at + policy.grace_period,
                claims=verification.claims,
            )
        if production:
            return _deny(RefusalCode.TOKEN_EXPIRED, "the auth token has expired")
        return _accept(R_EXPIRED_ANON, SUBJECT_ANONYMOUS, warn=True)
    if production:
        return _deny(RefusalCode.INVALID_TOKEN, "the auth token is not valid")
    return _accept(R_INVALID_ANON, SUBJECT_ANONYMOUS, warn=True)


def store_allowed(decision: Decision, store_id: str, policy: Policy) -> bool:
    """Per-store access: the ``stores_claim`` lists the storeIds or globs a subject may use.

    Applies to JWT subjects only: bypass connections may use any store, and development
    subjects (dev, anonymous) exist only when ``require_auth`` is false.
    """
    if not policy.stores_claim or decision.reason not in (R_JWT, R_GRACE):
        return True
    allowed = decision.claims.get(policy.stores_claim)
    if isinstance(allowed, str):
        allowed = [part.strip() for part in allowed.split(",")]
    if not isinstance(allowed, list):
        return False
    return any(
        isinstance(pattern, str) and fnmatch.fnmatchcase(store_id, pattern) for pattern in allowed
    )
