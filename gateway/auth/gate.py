"""The ``validate_payload`` hook with the auth policy: keys, JWKS, lockout, logs.

:class:`AuthGate` is what admission calls before every WebSocket upgrade and every
HTTP-transport request. It reads the clock, loads keys, fetches JWKS documents (off the
event loop), counts failed attempts per client IP and writes the security log; the decision
itself is :func:`gateway.auth.decide`, which is pure.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm

from gateway.admission import Admission, PayloadContext
from gateway.auth import jws
from gateway.auth import policy as auth
from gateway.auth.limits import FailureTracker, PushLimiter
from gateway.config import HMAC_ALGORITHMS, AuthConfig
from gateway.errors import ConfigError, Refusal, RefusalCode
from gateway.revocation import RevocationSet
from gateway.rules import PushRules, keep_claims

logger = logging.getLogger("gateway.auth")
security = logging.getLogger("gateway.security")

Clock = Callable[[], float]

# Refusals that are no evidence of guessing: they never count towards (nor meet) a lockout.
_NOT_GUESSING = frozenset(
    {RefusalCode.TOKEN_EXPIRED, RefusalCode.TOKEN_REVOKED, RefusalCode.STORE_FORBIDDEN}
)


def _load_public_keys(paths: tuple[str, ...]) -> tuple[Any, ...]:
    keys = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            keys.append(load_pem_public_key(data))
        except OSError as exc:
            raise ConfigError(
                f"auth.public_key_files: cannot read {path}: {exc.strerror}"
            ) from None
        except ValueError:
            raise ConfigError(f"auth.public_key_files: {path} is not a PEM public key") from None
    return tuple(keys)


_HMAC_HASHES = {
    "HS256": HMACAlgorithm.SHA256,
    "HS384": HMACAlgorithm.SHA384,
    "HS512": HMACAlgorithm.SHA512,
}


class _PreparedHMAC(HMACAlgorithm):
    """pyjwt's HMAC algorithm with the key vetted once, when loaded, not on every token.

    pyjwt's ``prepare_key`` refuses secrets that look like PEM or SSH keys (the HS256-with-a-
    public-key attack); it costs a third of a verification. Our secrets pass that check once
    in :func:`_hmac_jwk`; signature verification itself stays pyjwt's.
    """

    def prepare_key(self, key: str | bytes) -> bytes:
        if isinstance(key, bytes):
            return key
        return super().prepare_key(key)


def _hmac_jwk(secret: bytes, algorithm: str) -> jwt.PyJWK:
    digest = _HMAC_HASHES[algorithm]
    try:
        HMACAlgorithm(digest).prepare_key(secret)
    except jwt.InvalidKeyError:
        raise ConfigError("auth.jwt_secret: looks like a PEM or SSH key, not a secret") from None
    encoded = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    jwk = jwt.PyJWK({"kty": "oct", "k": encoded}, algorithm=algorithm)
    jwk.Algorithm = _PreparedHMAC(digest)
    return jwk


class JwksCache:
    """Keys from a JWKS URL: fetched off the loop with a timeout, cached, refreshed when a
    token names an unknown ``kid`` (at most once per ``min_refresh_interval``)."""

    def __init__(
        self, url: str, *, timeout: float, min_refresh_interval: float, ttl: float, clock: Clock
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.min_refresh_interval = min_refresh_interval
        self.ttl = ttl
        self._clock = clock
        self._keys: dict[str | None, Any] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _fetch(self) -> dict[str, Any]:
        # The URL comes from the operator's configuration, which only allows http(s).
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            body = response.read(1024 * 1024)
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise ValueError("JWKS document is not an object")
        return data

    async def refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if (
                self._attempted_at is not None
                and now - self._attempted_at < self.min_refresh_interval
            ):
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                data = await asyncio.to_thread(self._fetch)
                keyset = jwt.PyJWKSet.from_dict(data)
            except Exception as exc:  # any failure keeps the old keys
                logger.warning("JWKS fetch from %s failed: %s", self.url, exc)
                return
            self._keys = {key.key_id: key.key for key in keyset.keys}
            self._fetched_at = now

    async def keys_for(self, kid: str | None) -> list[Any]:
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > self.ttl
        if stale or (kid is not None and kid not in self._keys):
            await self.refresh()
        if kid is not None:
            key = self._keys.get(kid)
            return [] if key is None else [key]
        return list(self._keys.values())


class AuthGate:
    """Callable as admission's ``validate_payload`` hook."""

    def __init__(self, config: AuthConfig, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self.decisions: Counter[str] = Counter()
        # Lockouts by the refusal that triggered them.
        self.lockouts: Counter[str] = Counter()
        self.failures = FailureTracker(config.lockout_failures, config.lockout_window)
        # Revoked tokens in force (the store's, kept current by the composition root).
        self.revoked = RevocationSet()
        # The push rules in force: an admission keeps the token claims they read.
        self.push_rules = PushRules()
        self.apply(config)

    def apply(self, config: AuthConfig) -> None:
        """(Re)load policy and keys; the failure counts carry over.

        Everything that can fail (key files, proxy networks) is prepared before anything is
        replaced, so a ConfigError leaves the gate exactly as it was.
        """
        public_keys = _load_public_keys(config.public_key_files)
        try:
            proxies = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
        except ValueError as exc:
            raise ConfigError(f"auth.trusted_proxies: {exc}") from None
        try:
            bypass_networks = [
                ipaddress.ip_network(n, strict=False) for n in config.bypass_allowed_networks
            ]
        except ValueError as exc:
            raise ConfigError(f"auth.bypass_allowed_networks: {exc}") from None
        # Vetted once per algorithm (see _PreparedHMAC): pyjwt would otherwise re-inspect the
        # raw secret (PEM? SSH?) on every verification, 10% of handshake CPU in the profile.
        secrets_ = [s.encode() for s in (config.jwt_secret, config.jwt_previous_secret) if s]
        hmac_keys: dict[str, list[jwt.PyJWK]] = {
            algorithm: [_hmac_jwk(secret, algorithm) for secret in secrets_]
            for algorithm in config.algorithms
            if algorithm in HMAC_ALGORITHMS
        }
        self.config = config
        self.policy = auth.Policy(
            require_auth=config.require_auth,
            grace_period=config.grace_period,
            dev_tokens=config.dev_tokens,
            bypass_token=config.bypass_token,
            stores_claim=config.stores_claim,
        )
        self.rules = auth.JwtRules(
            algorithms=config.algorithms,
            audience=config.audience,
            issuer=config.issuer,
            subject_claim=config.subject_claim,
            required_type=config.required_type,
            leeway=config.leeway,
        )
        self.hmac_keys = hmac_keys
        self.public_keys = public_keys
        self.jwks = (
            JwksCache(
                config.jwks_url,
                timeout=config.jwks_timeout,
                min_refresh_interval=config.jwks_min_refresh_interval,
                ttl=config.jwks_cache_ttl,
                clock=self._clock,
            )
            if config.jwks_url
            else None
        )
        self.failures.max_failures = config.lockout_failures
        self.failures.window = config.lockout_window
        self.push_limiter = PushLimiter(config.push_rate, config.push_burst)
        self._proxies = proxies
        self._bypass_networks = bypass_networks

    # -- helpers --------------------------------------------------------------------------

    def client_ip(self, context: PayloadContext) -> str:
        """The client's address; X-Forwarded-For only counts when a trusted proxy sent it."""
        remote = context.remote_addr or ""
        host = remote.rsplit(":", 1)[0].strip("[]") if remote else "unknown"
        if not self._proxies or not self._trusted(host):
            return host
        forwarded = context.headers.get("x-forwarded-for", "")
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return host
        return host

    def _bypass_network(self, host: str) -> bool:
        if not self._bypass_networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._bypass_networks)

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._proxies)

    async def _keys_for(self, header: dict[str, Any]) -> list[Any]:
        algorithm = header.get("alg")
        if algorithm in HMAC_ALGORITHMS:
            return list(self.hmac_keys.get(algorithm, ()))
        keys = list(self.public_keys)
        if self.jwks is not None:
            kid = header.get("kid")
            keys.extend(await self.jwks.keys_for(kid if isinstance(kid, str) else None))
        return keys

    async def verify(self, token: str) -> auth.Verification:
        compact = jws.parse(token)
        if compact is None:
            return auth.Invalid("malformed token")
        keys = await self._keys_for(compact.header)
        return auth.verify_jwt(token, keys, self.rules, self._clock(), compact)

    async def wait_push(self, admission: Admission) -> None:
        """Delay a push of a rate-limited subject until its bucket allows it."""
        if not admission.rate_limited:
            return
        delay = self.push_limiter.reserve(admission.subject, self._clock())
        if delay > 0:
            await asyncio.sleep(delay)

    # -- the hook -------------------------------------------------------------------------

    async def __call__(self, context: PayloadContext) -> Admission | Refusal:
        return await self.evaluate(context, record=True)

    async def evaluate(self, context: PayloadContext, *, record: bool) -> Admission | Refusal:
        """Decide on ``context``. With ``record=False`` (re-checking live sessions after a
        reload) nothing is counted or logged as an attempt."""
        config = self.config
        ip = self.client_ip(context)
        credentials = auth.extract_credentials(
            context.payload,
            query_token=context.query_token,
            headers=context.headers,
            cookie_name=config.cookie_name,
            max_token_bytes=config.max_token_bytes,
            production=config.require_auth,
        )
        if isinstance(credentials, Refusal):
            return self._refuse(context, ip, None, credentials, None, record=record)
        verification = None
        token = credentials.token
        if (
            credentials.bypass is None
            and token is not None
            and not auth.is_dev_token(token, self.policy)
        ):
            verification = await self.verify(token)
        decision = auth.decide(
            credentials,
            verification,
            self.policy,
            self._clock(),
            bypass_network=credentials.bypass is None or self._bypass_network(ip),
        )
        fingerprint = (
            auth.fingerprint(token or credentials.bypass or "")
            if (token or credentials.bypass)
            else None
        )
        if decision.denied is not None:
            return self._refuse(
                context, ip, credentials, decision.denied, verification, record=record
            )
        if not auth.store_allowed(decision, context.store_id, self.policy):
            denied = Refusal(code=RefusalCode.STORE_FORBIDDEN, message="this store is not allowed")
            return self._refuse(context, ip, credentials, denied, verification, record=record)
        if isinstance(verification, auth.Verified | auth.Expired) and self.revoked.covers(
            decision.subject, verification.claims, self._clock()
        ):
            denied = Refusal(code=RefusalCode.TOKEN_REVOKED, message="this token was revoked")
            return self._refuse(context, ip, credentials, denied, verification, record=record)
        if record:
            self.decisions[decision.reason] += 1
        if decision.warn and record:
            why = verification.why if isinstance(verification, auth.Invalid) else decision.reason
            logger.warning(
                "accepted with warning reason=%s why=%s store=%s subject=%s instance=%s "
                "token=%s ip=%s",
                decision.reason,
                why,
                context.store_id,
                decision.subject,
                credentials.instance_id,
                fingerprint,
                ip,
            )
        return Admission(
            subject=decision.subject or auth.SUBJECT_ANONYMOUS,
            reason=decision.reason,
            expires_at=decision.expires_at,
            instance_id=credentials.instance_id,
            fingerprint=fingerprint,
            rate_limited=decision.reason in (auth.R_JWT, auth.R_GRACE),
            claims=keep_claims(decision.claims, self.push_rules) if decision.claims else None,
        )

    def _refuse(
        self,
        context: PayloadContext,
        ip: str,
        credentials: auth.Credentials | None,
        denied: Refusal,
        verification: auth.Verification | None,
        *,
        record: bool = True,
    ) -> Refusal:
        """Count, log and return a refusal; while ``ip`` is locked out, a 429 instead.

        Only a request that fails is ever locked out: one whose credential verifies is
        admitted whatever its address did before (offices, campuses and carrier NAT share
        addresses). Failures that are not guessing never count towards a lockout: a token
        whose signature is good but which expired beyond the grace window (a stale app), or
        a verified one that may not use this store.
        """
        if not record:
            return denied
        now = self._clock()
        guessing = denied.code not in _NOT_GUESSING
        retry_after = self.failures.retry_after(ip, now) if guessing else None
        if retry_after is not None:
            # Locked out: answered without more bookkeeping than a count.
            self.decisions[RefusalCode.RATE_LIMITED] += 1
            return Refusal(
                code=RefusalCode.RATE_LIMITED,
                message="too many failed attempts; try again later",
                headers=(("Retry-After", str(max(1, round(retry_after)))),),
            )
        self.decisions[denied.code] += 1
        secret = None
        if credentials is not None:
            secret = credentials.token or credentials.bypass
        tag = auth.fingerprint(secret) if secret else None
        # Repeats of the same refused attempt (a stuck client retrying) count once.
        locked = guessing and self.failures.record_failure(ip, now, tag or f"<{denied.code}>")
        security.warning(
            "refused code=%s why=%s store=%s instance=%s token=%s ip=%s transport=%s",
            denied.code,
            verification.why if isinstance(verification, auth.Invalid) else denied.code,
            context.store_id,
            credentials.instance_id if credentials else None,
            tag,
            ip,
            context.transport,
        )
        if locked:
            self.lockouts[denied.code] += 1
            security.warning(
                "lockout ip=%s after %d failed attempts in %.0f s (last: %s)",
                ip,
                self.failures.max_failures,
                self.failures.window,
                denied.code,
            )
        return denied
