"""The auth policy as pure functions (gateway.auth), with a fixed ``now``.

Every cell of the decision table (README, "Authentication") is a parametrized case, run
through the same pipeline the hook uses: extract_credentials -> verify_jwt -> decide. Keys
and secrets come from tests/helpers/keys.py (generated per test session; nothing secret is
committed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
import pytest

from gateway.admission import MISSING
from gateway.auth import policy as auth
from gateway.errors import Refusal
from tests.helpers.keys import (
    AUDIENCE,
    BYPASS,
    DEV_TOKEN,
    EC384_KEY,
    EC_KEY,
    ED_KEY,
    ISSUER,
    OTHER_RSA_KEY,
    OTHER_SECRET,
    RSA_KEY,
    RSA_PUBLIC_PEM,
    SECRET,
    b64,
    forge,
    forge_hs256,
    replace_claims,
    with_token,
)

NOW = 1_750_000_000.0
GRACE = 86_400.0
LEEWAY = 10.0
MAX_TOKEN_BYTES = 8192

HS_RULES = auth.JwtRules(
    algorithms=("HS256",),
    audience=AUDIENCE,
    issuer=ISSUER,
    required_type="access",
    leeway=LEEWAY,
)
HS_KEYS = (SECRET.encode(),)


# ---------------------------------------------------------------------------------------------
# Token helpers


def claims_for(**changes: Any) -> dict[str, Any]:
    """Claims of a token that HS_RULES accepts at NOW; ``key=None`` removes a claim."""
    claims: dict[str, Any] = {
        "sub": "alice",
        "exp": NOW + 3600,
        "iat": NOW - 60,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "type": "access",
    }
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def mint(
    *,
    key: Any = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    return jwt.encode(claims_for(**changes), key, algorithm=algorithm, headers=headers)


def tamper_claims(token: str, **changes: Any) -> str:
    """Replace the claims segment, keeping the original header and signature."""
    return replace_claims(token, claims_for(**changes))


# ---------------------------------------------------------------------------------------------
# The pipeline the hook runs


def make_policy(*, require_auth: bool, grace: float = GRACE, **kw: Any) -> auth.Policy:
    kw.setdefault("dev_tokens", (DEV_TOKEN,))
    kw.setdefault("bypass_token", BYPASS)
    return auth.Policy(require_auth=require_auth, grace_period=grace, **kw)


def evaluate(
    payload: object,
    policy: auth.Policy,
    *,
    rules: auth.JwtRules = HS_RULES,
    keys: tuple[Any, ...] = HS_KEYS,
    now: float = NOW,
) -> auth.Decision:
    credentials = auth.extract_credentials(
        payload,
        query_token=None,
        headers={},
        cookie_name="",
        max_token_bytes=MAX_TOKEN_BYTES,
        production=policy.require_auth,
    )
    assert isinstance(credentials, auth.Credentials), credentials
    verification = None
    token = credentials.token
    if credentials.bypass is None and token is not None and not auth.is_dev_token(token, policy):
        verification = auth.verify_jwt(token, keys, rules, now)
    return auth.decide(credentials, verification, policy, now)


@dataclass(frozen=True)
class Accept:
    subject: str
    reason: str
    warn: bool = False


@dataclass(frozen=True)
class Deny:
    status: int
    code: str


Expectation = Accept | Deny


# (credential id, payload factory, grace period, development expectation, production one)
INVALID_AS_ANON = Accept("anonymous", auth.R_INVALID_ANON, warn=True)
INVALID_TOKEN = Deny(401, "INVALID_TOKEN")

INVALID_JWTS: list[tuple[str, Callable[[], str], str]] = [
    ("bad-signature", lambda: mint(key=OTHER_SECRET), "bad signature"),
    ("tampered-claims", lambda: tamper_claims(mint(), sub="admin"), "bad signature"),
    ("malformed-garbage", lambda: "not-a-jwt", "malformed"),
    ("malformed-three-parts", lambda: "aaa.bbb.ccc", "malformed"),
    (
        "malformed-claims-not-json",
        lambda: b64(b'{"alg":"HS256"}') + "." + b64(b"nope") + ".xx",
        "malformed",
    ),
    ("alg-not-allowed-hs512", lambda: mint(algorithm="HS512"), "algorithm"),
    ("alg-none", lambda: jwt.encode(claims_for(), "", algorithm="none"), "algorithm"),
    ("alg-none-forged", lambda: forge({"alg": "none", "typ": "JWT"}, claims_for()), "algorithm"),
    ("alg-RS256-when-only-HS", lambda: mint(key=RSA_KEY, algorithm="RS256"), "algorithm"),
    ("nbf-in-future", lambda: mint(nbf=NOW + 3600), "not valid yet"),
    ("wrong-audience", lambda: mint(aud="someone-else"), "audience"),
    ("missing-audience", lambda: mint(aud=None), "aud"),
    ("wrong-issuer", lambda: mint(iss="https://evil.example"), "issuer"),
    ("missing-exp", lambda: mint(exp=None), "exp"),
    ("exp-not-a-number", lambda: mint(exp="tomorrow"), "exp"),
    ("missing-subject", lambda: mint(sub=None), "sub"),
    ("empty-subject", lambda: mint(sub=""), "sub"),
    ("wrong-type", lambda: mint(type="refresh"), "type"),
    ("missing-type", lambda: mint(type=None), "type"),
    # Grace is only for tokens that are valid in every other respect.
    ("expired-and-bad-signature", lambda: mint(key=OTHER_SECRET, exp=NOW - 3600), "signature"),
    ("expired-and-wrong-audience", lambda: mint(aud="x", exp=NOW - 3600), "audience"),
    ("expired-and-missing-subject", lambda: mint(sub=None, exp=NOW - 3600), "sub"),
]

TABLE: list[tuple[str, Callable[[], object], float, Expectation, Expectation]] = [
    (
        "valid-jwt",
        lambda: with_token(mint()),
        GRACE,
        Accept("alice", auth.R_JWT),
        Accept("alice", auth.R_JWT),
    ),
    (
        "expired-within-grace",
        lambda: with_token(mint(exp=NOW - 3600)),
        GRACE,
        Accept("alice", auth.R_GRACE, warn=True),
        Accept("alice", auth.R_GRACE, warn=True),
    ),
    (
        "expired-at-grace-edge",
        lambda: with_token(mint(exp=NOW - GRACE)),
        GRACE,
        Accept("alice", auth.R_GRACE, warn=True),
        Accept("alice", auth.R_GRACE, warn=True),
    ),
    (
        "expired-within-custom-grace",
        lambda: with_token(mint(exp=NOW - 300)),
        600.0,
        Accept("alice", auth.R_GRACE, warn=True),
        Accept("alice", auth.R_GRACE, warn=True),
    ),
    (
        "expired-beyond-grace",
        lambda: with_token(mint(exp=NOW - GRACE - 1)),
        GRACE,
        Accept("anonymous", auth.R_EXPIRED_ANON, warn=True),
        Deny(401, "TOKEN_EXPIRED"),
    ),
    (
        "expired-beyond-custom-grace",
        lambda: with_token(mint(exp=NOW - 601)),
        600.0,
        Accept("anonymous", auth.R_EXPIRED_ANON, warn=True),
        Deny(401, "TOKEN_EXPIRED"),
    ),
    (
        "expired-grace-disabled",
        lambda: with_token(mint(exp=NOW - 60)),
        0.0,
        Accept("anonymous", auth.R_EXPIRED_ANON, warn=True),
        Deny(401, "TOKEN_EXPIRED"),
    ),
    (
        "expired-within-leeway-is-valid",
        lambda: with_token(mint(exp=NOW - LEEWAY / 2)),
        0.0,
        Accept("alice", auth.R_JWT),
        Accept("alice", auth.R_JWT),
    ),
    (
        "dev-token",
        lambda: with_token(DEV_TOKEN),
        GRACE,
        Accept("dev", auth.R_DEV),
        Deny(403, "DEV_TOKEN_REJECTED"),
    ),
    (
        "correct-bypass",
        lambda: {"instanceId": "svc-1", "serverBypass": BYPASS},
        GRACE,
        Accept("server", auth.R_BYPASS),
        Accept("server", auth.R_BYPASS),
    ),
    (
        "correct-bypass-beats-a-bad-token",
        lambda: {"instanceId": "svc-1", "serverBypass": BYPASS, "authToken": "garbage"},
        GRACE,
        Accept("server", auth.R_BYPASS),
        Accept("server", auth.R_BYPASS),
    ),
    (
        "wrong-bypass",
        lambda: {"instanceId": "svc-1", "serverBypass": BYPASS + "x"},
        GRACE,
        Accept("anonymous", auth.R_BYPASS_ANON, warn=True),
        Deny(403, "BYPASS_REJECTED"),
    ),
    (
        "wrong-bypass-prefix",
        lambda: {"instanceId": "svc-1", "serverBypass": BYPASS[:-1]},
        GRACE,
        Accept("anonymous", auth.R_BYPASS_ANON, warn=True),
        Deny(403, "BYPASS_REJECTED"),
    ),
    (
        "wrong-bypass-with-valid-jwt",
        lambda: {"instanceId": "svc-1", "serverBypass": "nope", "authToken": mint()},
        GRACE,
        Accept("anonymous", auth.R_BYPASS_ANON, warn=True),
        Deny(403, "BYPASS_REJECTED"),
    ),
    (
        "no-credential",
        lambda: {"instanceId": "device-1"},
        GRACE,
        Accept("anonymous", auth.R_ANONYMOUS),
        Deny(401, "MISSING_TOKEN"),
    ),
    (
        "empty-token-is-no-credential",
        lambda: {"instanceId": "device-1", "authToken": ""},
        GRACE,
        Accept("anonymous", auth.R_ANONYMOUS),
        Deny(401, "MISSING_TOKEN"),
    ),
    *(
        (
            f"invalid-jwt-{name}",
            (lambda make=make: with_token(make())),
            GRACE,
            INVALID_AS_ANON,
            INVALID_TOKEN,
        )
        for name, make, _ in INVALID_JWTS
    ),
]

CELLS = [
    pytest.param(make, grace, require_auth, (prod if require_auth else dev), id=f"{cid}-{mode}")
    for cid, make, grace, dev, prod in TABLE
    for require_auth, mode in ((False, "development"), (True, "production"))
]


def assert_decision(decision: auth.Decision, expected: Expectation) -> None:
    if isinstance(expected, Accept):
        assert decision.allowed, decision
        assert decision.denied is None, decision
        assert decision.subject == expected.subject, decision
        assert decision.reason == expected.reason, decision
        assert decision.warn is expected.warn, decision
    else:
        assert not decision.allowed, decision
        assert decision.subject is None, decision
        assert decision.denied is not None, decision
        assert (decision.denied.status, decision.denied.code) == (expected.status, expected.code)
        assert decision.reason == expected.code
        assert decision.denied.message
        assert decision.warn


class TestDecisionTable:
    @pytest.mark.parametrize(
        ("make", "why"), [pytest.param(m, w, id=n) for n, m, w in INVALID_JWTS]
    )
    def test_invalid_jwts_are_invalid_for_their_reason(
        self, make: Callable[[], str], why: str
    ) -> None:
        """Each invalid-JWT cell fails verification for the reason it is meant to test."""
        invalid(verify(make()), why)

    @pytest.mark.parametrize(("make_payload", "grace", "require_auth", "expected"), CELLS)
    def test_cell(
        self,
        make_payload: Callable[[], object],
        grace: float,
        require_auth: bool,
        expected: Expectation,
    ) -> None:
        payload = make_payload()
        decision = evaluate(payload, make_policy(require_auth=require_auth, grace=grace))
        assert_decision(decision, expected)
        if decision.denied is not None and isinstance(payload, dict):
            for secret in (payload.get("authToken"), payload.get("serverBypass")):
                if secret:
                    assert secret not in decision.denied.message

    @pytest.mark.parametrize("require_auth", [False, True])
    def test_session_lifetime(self, require_auth: bool) -> None:
        """A JWT session lives until exp + grace; bypass and anonymous ones have no end."""
        policy = make_policy(require_auth=require_auth)
        valid = evaluate(with_token(mint(exp=NOW + 100)), policy)
        assert valid.expires_at == NOW + 100 + GRACE
        assert valid.claims["sub"] == "alice"
        graced = evaluate(with_token(mint(exp=NOW - 100)), policy)
        assert graced.expires_at == NOW - 100 + GRACE
        no_grace = evaluate(
            with_token(mint(exp=NOW + 100)), make_policy(require_auth=True, grace=0)
        )
        assert no_grace.expires_at == NOW + 100
        bypass = evaluate({"instanceId": "s", "serverBypass": BYPASS}, policy)
        assert bypass.expires_at is None

    def test_anonymous_sessions_have_no_expiry(self) -> None:
        policy = make_policy(require_auth=False)
        for payload in (
            {"instanceId": "d"},
            with_token(DEV_TOKEN),
            with_token(mint(exp=NOW - 2 * GRACE)),
            with_token("garbage"),
        ):
            decision = evaluate(payload, policy)
            assert decision.allowed
            assert decision.expires_at is None, payload

    @pytest.mark.parametrize("require_auth", [False, True])
    def test_unconfigured_bypass_never_matches(self, require_auth: bool) -> None:
        """Without SERVER_BYPASS_TOKEN no serverBypass value is accepted, not even ''."""
        policy = make_policy(require_auth=require_auth, bypass_token="")
        for value in ("x", " ", BYPASS):
            decision = evaluate({"instanceId": "svc", "serverBypass": value}, policy)
            assert decision.subject != auth.SUBJECT_SERVER
            if require_auth:
                assert decision.denied is not None
                assert decision.denied.code == "BYPASS_REJECTED"

    def test_dev_token_list_is_configurable(self) -> None:
        """Only the configured dev tokens are dev tokens; others are checked as JWTs."""
        policy = make_policy(require_auth=False, dev_tokens=("local-dev-token",))
        assert evaluate(with_token("local-dev-token"), policy).reason == auth.R_DEV
        assert evaluate(with_token(DEV_TOKEN), policy).reason == auth.R_INVALID_ANON
        production = make_policy(require_auth=True, dev_tokens=("local-dev-token",))
        denied = evaluate(with_token("local-dev-token"), production).denied
        assert denied is not None
        assert denied.code == "DEV_TOKEN_REJECTED"

    def test_decide_reads_the_clock_it_is_given(self) -> None:
        """The grace window is measured against ``now``, not the wall clock."""
        token = mint(exp=NOW - 3600)
        policy = make_policy(require_auth=True)
        assert evaluate(with_token(token), policy).reason == auth.R_GRACE
        late = evaluate(with_token(token), policy, now=NOW + GRACE)
        assert late.denied is not None
        assert late.denied.code == "TOKEN_EXPIRED"


# ---------------------------------------------------------------------------------------------
# extract_credentials


def extract(
    payload: object = MISSING,
    *,
    query_token: str | None = None,
    headers: Mapping[str, str] | None = None,
    cookie_name: str = "sess",
    production: bool = False,
    max_token_bytes: int = MAX_TOKEN_BYTES,
) -> auth.Credentials | Refusal:
    return auth.extract_credentials(
        payload,
        query_token=query_token,
        headers=dict(headers or {}),
        cookie_name=cookie_name,
        max_token_bytes=max_token_bytes,
        production=production,
    )


def creds(result: auth.Credentials | Refusal) -> auth.Credentials:
    assert isinstance(result, auth.Credentials), result
    return result


def denied(result: auth.Credentials | Refusal, code: str) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.code == code, result
    assert 400 <= result.status < 500
    assert result.message
    return result


ALL_HEADERS = {"authorization": "Bearer from-header", "cookie": "a=1; sess=from-cookie"}


class TestExtractCredentials:
    @pytest.mark.parametrize(
        ("drop", "token", "source"),
        [
            ((), "from-payload", "payload"),
            (("payload",), "from-query", "query"),
            (("payload", "query"), "from-header", "header"),
            (("payload", "query", "authorization"), "from-cookie", "cookie"),
            (("payload", "query", "authorization", "cookie"), None, None),
        ],
    )
    def test_source_order(self, drop: tuple[str, ...], token: str | None, source: str) -> None:
        """payload authToken > query token > Authorization: Bearer > cookie."""
        payload: dict[str, Any] = {"instanceId": "i"}
        if "payload" not in drop:
            payload["authToken"] = "from-payload"
        result = creds(
            extract(
                payload,
                query_token=None if "query" in drop else "from-query",
                headers={k: v for k, v in ALL_HEADERS.items() if k not in drop},
            )
        )
        assert (result.token, result.token_source) == (token, source)
        assert result.instance_id == "i"

    def test_empty_payload_token_falls_through(self) -> None:
        result = creds(extract({"authToken": ""}, query_token="q"))
        assert (result.token, result.token_source) == ("q", "query")

    @pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
    def test_bearer_scheme_is_case_insensitive(self, scheme: str) -> None:
        result = creds(extract(headers={"authorization": f"{scheme} tok.en.x"}))
        assert (result.token, result.token_source) == ("tok.en.x", "header")

    @pytest.mark.parametrize(
        "value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "", "tok.en.x", "Token abc"]
    )
    def test_other_authorization_values_are_no_token(self, value: str) -> None:
        assert creds(extract(headers={"authorization": value})).token is None

    @pytest.mark.parametrize(
        ("cookie", "token"),
        [
            ("sess=abc", "abc"),
            ("a=1; sess=abc; b=2", "abc"),
            ('sess="abc"', "abc"),
            ("  sess=abc ", "abc"),
            ("session=abc; xsess=def", None),
            ("sess=", None),
            ("sess", None),
            (";;=;==; ;", None),
            ("\x00\x01garbage", None),
        ],
    )
    def test_cookie(self, cookie: str, token: str | None) -> None:
        result = creds(extract(headers={"cookie": cookie}))
        assert result.token == token
        assert result.token_source == ("cookie" if token else None)

    def test_cookie_disabled_without_a_name(self) -> None:
        assert creds(extract(headers={"cookie": "sess=abc"}, cookie_name="")).token is None

    def test_bypass(self) -> None:
        result = creds(extract({"serverBypass": "b" * 40, "authToken": "t"}))
        assert (result.bypass, result.token) == ("b" * 40, "t")

    @pytest.mark.parametrize(
        "payload",
        [
            {"authToken": 123},
            {"authToken": ["t"]},
            {"authToken": {"t": 1}},
            {"authToken": True},
            {"serverBypass": 1},
            {"serverBypass": ["x"]},
            {"instanceId": 5},
            {"instanceId": ""},
            {"instanceId": "x" * 129},
            {"instanceId": "has space"},
            {"instanceId": "slash/no"},
            {"instanceId": "ümlaut"},
            {"instanceId": "new\nline"},
            {"instanceId": ["i"]},
        ],
    )
    @pytest.mark.parametrize("production", [False, True])
    def test_wrong_types_are_bad_payload(self, payload: object, production: bool) -> None:
        denied(extract(payload, production=production), "BAD_PAYLOAD")

    @pytest.mark.parametrize("payload", [["a"], "token", 42, True])
    def test_non_object_payload(self, payload: object) -> None:
        """Any JSON payload is fine in development; production insists on an object."""
        assert creds(extract(payload)).token is None
        denied(extract(payload, production=True), "BAD_PAYLOAD")

    @pytest.mark.parametrize(
        "payload",
        [{"authToken": "t"}, {"instanceId": None, "authToken": "t"}, {"serverBypass": "b"}],
    )
    def test_instance_id_required_in_production(self, payload: object) -> None:
        """A credential without an instanceId is a malformed payload in production."""
        denied(extract(payload, production=True), "BAD_PAYLOAD")
        assert creds(extract(payload)).instance_id is None

    @pytest.mark.parametrize("payload", [MISSING, None, {}])
    def test_no_credential_at_all_is_left_to_the_decision(self, payload: object) -> None:
        """Nothing presented: extraction passes, and the table answers 401 MISSING_TOKEN."""
        credentials = creds(extract(payload, production=True))
        assert (credentials.token, credentials.bypass) == (None, None)
        policy = auth.Policy(require_auth=True, grace_period=86400)
        decision = auth.decide(credentials, None, policy, 0.0)
        assert decision.denied is not None
        assert decision.denied.code == "MISSING_TOKEN"

    @pytest.mark.parametrize("instance_id", ["a", "x" * 128, "Dev-1.2_3:4@5+6=7", "A-z"])
    def test_instance_id_accepted(self, instance_id: str) -> None:
        result = creds(extract({"instanceId": instance_id}, production=True))
        assert result.instance_id == instance_id

    @pytest.mark.parametrize("source", ["payload", "query", "header", "cookie", "bypass"])
    def test_oversized_credentials(self, source: str) -> None:
        """Credentials are capped in bytes, from every source."""
        limit = 300

        def run(secret: str) -> auth.Credentials | Refusal:
            payload: dict[str, Any] = {"instanceId": "i"}
            headers: dict[str, str] = {}
            query = None
            if source == "payload":
                payload["authToken"] = secret
            elif source == "bypass":
                payload["serverBypass"] = secret
            elif source == "query":
                query = secret
            elif source == "header":
                headers["authorization"] = f"Bearer {secret}"
            else:
                headers["cookie"] = f"sess={secret}"
            return extract(payload, query_token=query, headers=headers, max_token_bytes=limit)

        creds(run("a" * limit))
        error = denied(run("a" * (limit + 1)), "TOKEN_TOO_LARGE")
        assert "a" * 50 not in error.message
        # The cap counts bytes, not characters.
        denied(run("é" * (limit // 2 + 1)), "TOKEN_TOO_LARGE")

    def test_100kb_token_is_refused_before_verification(self) -> None:
        big = mint(pad="x" * 100_000)
        assert len(big) > 100_000
        denied(extract({"instanceId": "i", "authToken": big}), "TOKEN_TOO_LARGE")


# ---------------------------------------------------------------------------------------------
# verify_jwt: the attack list and the claim rules


def verify(
    token: str,
    keys: tuple[Any, ...] = HS_KEYS,
    rules: auth.JwtRules = HS_RULES,
    now: float = NOW,
) -> auth.Verification:
    return auth.verify_jwt(token, keys, rules, now)


def invalid(result: auth.Verification, why: str | None = None) -> None:
    assert isinstance(result, auth.Invalid), result
    if why is not None:
        assert why in result.why, result


RS_RULES = auth.JwtRules(algorithms=("RS256",), leeway=LEEWAY)


class TestVerifyJwt:
    def test_valid(self) -> None:
        result = verify(mint())
        assert isinstance(result, auth.Verified), result
        assert result.subject == "alice"
        assert result.expires_at == NOW + 3600
        assert result.claims["aud"] == AUDIENCE

    @pytest.mark.parametrize(
        ("algorithm", "private", "public"),
        [
            ("HS256", SECRET, SECRET.encode()),
            ("HS384", SECRET, SECRET.encode()),
            ("HS512", SECRET, SECRET.encode()),
            ("RS256", RSA_KEY, RSA_KEY.public_key()),
            ("RS512", RSA_KEY, RSA_KEY.public_key()),
            ("PS256", RSA_KEY, RSA_KEY.public_key()),
            ("ES256", EC_KEY, EC_KEY.public_key()),
            ("ES384", EC384_KEY, EC384_KEY.public_key()),
            ("EdDSA", ED_KEY, ED_KEY.public_key()),
        ],
    )
    def test_each_algorithm_with_its_key(self, algorithm: str, private: Any, public: Any) -> None:
        rules = auth.JwtRules(algorithms=(algorithm,))
        token = jwt.encode({"sub": "u", "exp": NOW + 60}, private, algorithm=algorithm)
        assert isinstance(verify(token, (public,), rules), auth.Verified)
        # The same token is refused when its algorithm is not configured.
        other = ("HS256",) if algorithm != "HS256" else ("RS256",)
        invalid(verify(token, (public,), auth.JwtRules(algorithms=other)), "algorithm")

    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
    def test_alg_none(self, alg: str) -> None:
        """An unsigned token is never accepted, whatever the capitalisation."""
        token = forge({"alg": alg, "typ": "JWT"}, claims_for())
        invalid(verify(token), "algorithm")
        invalid(verify(token, (RSA_KEY.public_key(),), RS_RULES), "algorithm")

    def test_alg_none_via_pyjwt(self) -> None:
        token = jwt.encode(claims_for(), "", algorithm="none")
        invalid(verify(token), "algorithm")

    def test_alg_missing_or_not_a_string(self) -> None:
        invalid(verify(forge({"typ": "JWT"}, claims_for(), b"sig")))
        invalid(verify(forge({"alg": ["HS256"]}, claims_for(), b"sig")))

    def test_hs256_signed_with_the_rs_public_key(self) -> None:
        """The classic key confusion: HS256 keyed with the server's RSA public key PEM."""
        token = forge_hs256({"alg": "HS256", "typ": "JWT"}, claims_for(), RSA_PUBLIC_PEM)
        invalid(verify(token, (RSA_KEY.public_key(),), RS_RULES), "algorithm")
        # With HS256 also configured, HS tokens are checked against the HS secret only.
        both = auth.JwtRules(algorithms=("RS256", "HS256"))
        invalid(verify(token, HS_KEYS, both), "signature")

    def test_tampered_claims(self) -> None:
        token = mint()
        forged = tamper_claims(token, sub="admin")
        invalid(verify(forged), "signature")
        rs = mint(key=RSA_KEY, algorithm="RS256")
        invalid(verify(tamper_claims(rs, sub="admin"), (RSA_KEY.public_key(),), RS_RULES))

    def test_tampered_header(self) -> None:
        """Changing the header (here: to another allowed algorithm) breaks the signature."""
        token = mint()
        _, claims, signature = token.split(".")
        header = b64(orjson.dumps({"alg": "HS384", "typ": "JWT"}))
        rules = auth.JwtRules(algorithms=("HS256", "HS384"), audience=AUDIENCE, issuer=ISSUER)
        invalid(verify(f"{header}.{claims}.{signature}", rules=rules), "signature")

    def test_tampered_signature(self) -> None:
        header, claims, signature = mint().split(".")
        middle = len(signature) // 2
        flipped = "A" if signature[middle] != "A" else "B"
        bad = signature[:middle] + flipped + signature[middle + 1 :]
        invalid(verify(f"{header}.{claims}.{bad}"), "signature")
        invalid(verify(f"{header}.{claims}."), "signature")

    def test_signed_by_another_key(self) -> None:
        token = mint(key=OTHER_RSA_KEY, algorithm="RS256")
        invalid(verify(token, (RSA_KEY.public_key(),), RS_RULES), "signature")

    def test_unknown_kid_has_no_key(self) -> None:
        """The gate passes no key for an unknown kid; that is an invalid token."""
        token = mint(key=RSA_KEY, algorithm="RS256", headers={"kid": "unknown"})
        invalid(verify(token, (), RS_RULES), "no key")

    def test_previous_secret_during_rotation(self) -> None:
        old = mint(key=OTHER_SECRET)
        keys = (SECRET.encode(), OTHER_SECRET.encode())
        result = verify(old, keys)
        assert isinstance(result, auth.Verified)
        invalid(verify(old, HS_KEYS), "signature")

    def test_expired_beyond_grace_is_expired(self) -> None:
        result = verify(mint(exp=NOW - 2 * GRACE))
        assert isinstance(result, auth.Expired), result
        assert result.subject == "alice"
        assert result.expires_at == NOW - 2 * GRACE

    def test_leeway_on_exp(self) -> None:
        assert isinstance(verify(mint(exp=NOW - LEEWAY + 1)), auth.Verified)
        assert isinstance(verify(mint(exp=NOW - LEEWAY - 1)), auth.Expired)
        strict = auth.JwtRules(algorithms=("HS256",), leeway=0)
        token = jwt.encode({"sub": "u", "exp": NOW - 1}, SECRET, algorithm="HS256")
        assert isinstance(verify(token, rules=strict), auth.Expired)

    def test_future_nbf(self) -> None:
        invalid(verify(mint(nbf=NOW + 3600)), "not valid yet")
        invalid(verify(mint(nbf=NOW + LEEWAY + 1)), "not valid yet")
        assert isinstance(verify(mint(nbf=NOW + LEEWAY - 1)), auth.Verified)
        assert isinstance(verify(mint(nbf=NOW - 10)), auth.Verified)
        invalid(verify(mint(nbf="soon")), "nbf")

    def test_audience(self) -> None:
        invalid(verify(mint(aud="other")), "audience")
        invalid(verify(mint(aud=["a", "b"])), "audience")
        invalid(verify(mint(aud=None)), "aud")
        assert isinstance(verify(mint(aud=["other", AUDIENCE])), auth.Verified)
        # Without a configured audience, aud is not checked.
        loose = auth.JwtRules(algorithms=("HS256",))
        assert isinstance(verify(mint(aud="anything"), rules=loose), auth.Verified)

    def test_issuer(self) -> None:
        invalid(verify(mint(iss="https://evil.example")), "issuer")
        invalid(verify(mint(iss=None)), "iss")

    @pytest.mark.parametrize("sub", [None, "", [], {}, True, 1.5])
    def test_missing_or_bad_subject(self, sub: Any) -> None:
        claims = {"exp": NOW + 60, **({} if sub is None else {"sub": sub})}
        token = forge_hs256({"alg": "HS256"}, claims, SECRET.encode())
        # pyjwt itself refuses some of these shapes; either way the token is invalid.
        invalid(verify(token, rules=auth.JwtRules(algorithms=("HS256",))))

    def test_integer_subject_is_a_string(self) -> None:
        token = jwt.encode({"exp": NOW + 60, "userId": 42}, SECRET)
        rules = auth.JwtRules(algorithms=("HS256",), subject_claim="userId")
        result = verify(token, rules=rules)
        assert isinstance(result, auth.Verified)
        assert result.subject == "42"

    def test_custom_subject_claim(self) -> None:
        rules = auth.JwtRules(algorithms=("HS256",), subject_claim="userId")
        token = jwt.encode({"exp": NOW + 60, "userId": "u-7", "sub": "ignored"}, SECRET)
        result = verify(token, rules=rules)
        assert isinstance(result, auth.Verified)
        assert result.subject == "u-7"
        only_sub = jwt.encode({"exp": NOW + 60, "sub": "alice"}, SECRET)
        invalid(verify(only_sub, rules=rules), "userId")

    def test_required_type(self) -> None:
        rules = auth.JwtRules(algorithms=("HS256",), required_type="access")
        ok = jwt.encode({"exp": NOW + 60, "sub": "a", "type": "access"}, SECRET)
        assert isinstance(verify(ok, rules=rules), auth.Verified)
        for kind in ("refresh", "ACCESS", None):
            claims: dict[str, Any] = {"exp": NOW + 60, "sub": "a"}
            if kind is not None:
                claims["type"] = kind
            invalid(verify(jwt.encode(claims, SECRET), rules=rules), "type")
        # Without required_type, the claim is not looked at.
        loose = auth.JwtRules(algorithms=("HS256",))
        refresh = jwt.encode({"exp": NOW + 60, "sub": "a", "type": "refresh"}, SECRET)
        assert isinstance(verify(refresh, rules=loose), auth.Verified)

    @pytest.mark.parametrize("exp", [None, "123", True, [1], {"t": 1}])
    def test_exp_required_and_numeric(self, exp: Any) -> None:
        claims: dict[str, Any] = {"sub": "a"}
        if exp is not None:
            claims["exp"] = exp
        rules = auth.JwtRules(algorithms=("HS256",))
        invalid(verify(forge_hs256({"alg": "HS256"}, claims, SECRET.encode()), rules=rules))

    def test_non_finite_exp_is_invalid(self) -> None:
        """exp NaN would make a session whose expiry timer cannot be scheduled."""
        rules = auth.JwtRules(algorithms=("HS256",))
        token = jwt.encode({"sub": "a", "exp": float("nan")}, SECRET)
        invalid(verify(token, rules=rules))

    def test_100kb_token(self) -> None:
        """Huge tokens fail fast and cleanly (the gate also caps them before this)."""
        big_signed = mint(pad="x" * 100_000, key=OTHER_SECRET)
        invalid(verify(big_signed), "signature")
        garbage = "a" * 50_000 + "." + "b" * 50_000 + "." + "c" * 100
        invalid(verify(garbage))

    @pytest.mark.parametrize(
        "token", ["", ".", "..", "a.b", "a.b.c.d", "eyJ.eyJ.x", "\x00\x01.\x02.\x03"]
    )
    def test_malformed(self, token: str) -> None:
        invalid(verify(token))

    def test_header_is_never_trusted_for_the_algorithm(self) -> None:
        """A token whose header says RS256 cannot be checked as HS256 and vice versa."""
        rs = mint(key=RSA_KEY, algorithm="RS256")
        invalid(verify(rs), "algorithm")  # HS-only rules
        hs = mint()
        invalid(verify(hs, (RSA_KEY.public_key(),), RS_RULES), "algorithm")

    def test_mixed_key_families(self) -> None:
        """With RSA and EC keys configured, each token is checked against the keys that fit."""
        rules = auth.JwtRules(algorithms=("RS256", "ES256"))
        keys = (EC_KEY.public_key(), RSA_KEY.public_key())
        rs = jwt.encode({"sub": "a", "exp": NOW + 60}, RSA_KEY, algorithm="RS256")
        es = jwt.encode({"sub": "a", "exp": NOW + 60}, EC_KEY, algorithm="ES256")
        assert isinstance(verify(rs, keys, rules), auth.Verified)
        assert isinstance(verify(es, keys[::-1], rules), auth.Verified)

    @pytest.mark.parametrize(
        ("algorithm", "private", "keys", "allowed"),
        [
            ("ES256", EC_KEY, (EC384_KEY.public_key(), EC_KEY.public_key()), ("ES256", "ES384")),
            ("EdDSA", ED_KEY, (RSA_KEY.public_key(), ED_KEY.public_key()), ("EdDSA", "RS256")),
        ],
    )
    def test_key_of_wrong_kind_never_raises(
        self, algorithm: str, private: Any, keys: tuple[Any, ...], allowed: tuple[str, ...]
    ) -> None:
        """A key that cannot serve the token's algorithm is skipped, never an exception
        (an exception in the hook answers 500 and escapes the lockout count)."""
        rules = auth.JwtRules(algorithms=allowed)
        good = jwt.encode({"sub": "a", "exp": NOW + 60}, private, algorithm=algorithm)
        assert isinstance(verify(good, keys, rules), auth.Verified)
        forged = forge({"alg": algorithm}, {"sub": "a", "exp": NOW + 60}, b"x" * 64)
        invalid(verify(forged, keys, rules))


def test_fingerprint() -> None:
    token = mint()
    fp = auth.fingerprint(token)
    assert fp == auth.fingerprint(token)
    assert len(fp) == 10
    assert all(c in "0123456789abcdef" for c in fp)
    assert fp not in token
    assert fp != auth.fingerprint(token + "x")


# ---------------------------------------------------------------------------------------------
# store_allowed


def jwt_decision(claims: dict[str, Any], reason: str = auth.R_JWT) -> auth.Decision:
    return auth.Decision(allowed=True, reason=reason, subject="alice", claims=claims)


STORES_POLICY = make_policy(require_auth=True, stores_claim="stores")


class TestStoreAllowed:
    @pytest.mark.parametrize(
        ("patterns", "store", "allowed"),
        [
            (["app-1"], "app-1", True),
            (["app-1"], "app-10", False),
            (["app-1"], "APP-1", False),
            (["app-*"], "app-1", True),
            (["app-*"], "app-", True),
            (["app-*"], "app", False),
            (["app-*"], "xapp-1", False),
            (["app-*"], "App-1", False),
            (["team-?"], "team-a", True),
            (["team-?"], "team-ab", False),
            (["[ab]-x"], "a-x", True),
            (["[ab]-x"], "c-x", False),
            (["*"], "anything", True),
            (["a", "b-*"], "b-2", True),
            ([], "a", False),
            ([1, None, "ok"], "ok", True),
            ([1, None], "1", False),
            ("a, b-*", "b-9", True),
            ("a, b-*", "c", False),
            ("a", "a", True),
            (None, "a", False),
            (42, "a", False),
            ({"a": 1}, "a", False),
        ],
    )
    def test_globs(self, patterns: Any, store: str, allowed: bool) -> None:
        claims = {} if patterns is None else {"stores": patterns}
        assert auth.store_allowed(jwt_decision(claims), store, STORES_POLICY) is allowed
        graced = jwt_decision(claims, auth.R_GRACE)
        assert auth.store_allowed(graced, store, STORES_POLICY) is allowed

    def test_disabled_without_a_claim_name(self) -> None:
        policy = make_policy(require_auth=True)
        assert auth.store_allowed(jwt_decision({}), "any", policy)
        assert auth.store_allowed(jwt_decision({"stores": []}), "any", policy)

    @pytest.mark.parametrize(
        "reason", [auth.R_BYPASS, auth.R_DEV, auth.R_ANONYMOUS, auth.R_INVALID_ANON]
    )
    def test_non_jwt_subjects_may_use_any_store(self, reason: str) -> None:
        decision = auth.Decision(allowed=True, reason=reason, subject="server")
        assert auth.store_allowed(decision, "whatever", STORES_POLICY)

    def test_claim_name_is_configurable(self) -> None:
        policy = make_policy(require_auth=True, stores_claim="allowedStores")
        decision = jwt_decision({"allowedStores": ["x-*"], "stores": ["*"]})
        assert auth.store_allowed(decision, "x-1", policy)
        assert not auth.store_allowed(decision, "y-1", policy)

    def test_end_to_end_from_a_token(self) -> None:
        token = mint(stores=["app-*"])
        decision = evaluate(with_token(token), STORES_POLICY)
        assert decision.allowed
        assert auth.store_allowed(decision, "app-1", STORES_POLICY)
        assert not auth.store_allowed(decision, "other", STORES_POLICY)
