"""gateway.auth.jws: the compact serialization, refused where pyjwt refuses it."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest

from gateway.auth import jws
from tests.helpers.keys import EC_KEY, RSA_KEY, SECRET, b64, forge_hs256

CLAIMS = {"sub": "alice", "exp": 2_000_000_000}


def hs256(header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> str:
    return forge_hs256(header or {"alg": "HS256"}, claims or CLAIMS, SECRET.encode())


def test_parts() -> None:
    token = jwt.encode(CLAIMS, SECRET, algorithm="HS256", headers={"kid": "k1"})
    compact = jws.parse(token)
    assert compact is not None
    assert compact.header == {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    assert compact.claims == CLAIMS
    head, body, signature = token.split(".")
    assert compact.signing_input == f"{head}.{body}".encode()
    assert compact.signature == base64.urlsafe_b64decode(signature + "==")


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "a.b",
        "a.b.c.d",
        ".e30.",  # no header
        "e30.e30.x y",  # a character outside the alphabet
        "e30.e30.x+",  # base64, not base64url
        "e30.e30.x/",
        "e30.e30.!!!!",
        "e30.e30.a",  # a length no encoding has
        "e30==.e30.",  # more padding than the length needs
        "e30.e30.QQ=",  # padding to a length that is not a multiple of 4
        "e30.e30.QQ===",
        "e30.e30.QR",  # non-canonical trailing bits (QR and QQ decode alike)
        "\x00\x01.\x02.\x03",
        "é30.e30.",
        f"{b64(b'[]')}.e30.",  # a header that is not an object
        f"e30.{b64(b'[1]')}.",  # claims that are not an object
        f"e30.{b64(b'not json')}.",
        f"{b64(b'{')}.e30.",
    ],
)
def test_malformed(token: str) -> None:
    assert jws.parse(token) is None


def test_correct_padding_is_accepted() -> None:
    """Some issuers (AWS ALB) pad their segments; pyjwt accepts that too."""
    token = hs256()
    head, body, signature = token.split(".")

    def pad(segment: str) -> str:
        return segment + "=" * (-len(segment) % 4)

    padded = jws.parse(f"{pad(head)}.{pad(body)}.{pad(signature)}")
    assert padded is not None
    assert padded.claims == CLAIMS


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "crit": ["b64"], "b64": False},
        {"alg": "HS256", "crit": []},
        {"alg": "HS256", "kid": 7},
        {"alg": "HS256", "kid": None},
    ],
)
def test_refused_headers(header: dict[str, Any]) -> None:
    assert jws.parse(hs256(header)) is None


def test_pyjwt_agrees_on_what_it_decodes() -> None:
    """What parse accepts, pyjwt decodes to the same claims (the two never drift apart)."""
    for token in (hs256(), hs256({"alg": "HS256", "kid": "x", "typ": "JWT"})):
        compact = jws.parse(token)
        assert compact is not None
        assert jwt.decode(token, SECRET, algorithms=["HS256"]) == compact.claims


class TestSignedBy:
    def test_hmac(self) -> None:
        compact = jws.parse(hs256())
        assert compact is not None
        assert jws.signed_by(compact, "HS256", SECRET.encode())
        assert not jws.signed_by(compact, "HS256", b"another secret of enough length!!")
        # The algorithm is the caller's, never the header's.
        assert not jws.signed_by(compact, "HS512", SECRET.encode())

    def test_pyjwk_is_bound_to_its_algorithm(self) -> None:
        compact = jws.parse(hs256())
        assert compact is not None
        key = jwt.PyJWK({"kty": "oct", "k": b64(SECRET.encode())}, algorithm="HS256")
        assert jws.signed_by(compact, "HS256", key)
        other = jwt.PyJWK({"kty": "oct", "k": b64(SECRET.encode())}, algorithm="HS384")
        assert not jws.signed_by(compact, "HS256", other)

    @pytest.mark.parametrize(
        ("algorithm", "key"),
        [
            ("RS256", EC_KEY.public_key()),  # another family
            ("ES384", EC_KEY.public_key()),  # another curve
            ("HS256", RSA_KEY.public_key()),  # a public key as an HMAC secret
            ("none", SECRET.encode()),  # no such algorithm here
            ("XX999", SECRET.encode()),
        ],
    )
    def test_a_key_that_cannot_serve_is_no_match(self, algorithm: str, key: Any) -> None:
        compact = jws.parse(jwt.encode(CLAIMS, EC_KEY, algorithm="ES256"))
        assert compact is not None
        assert not jws.signed_by(compact, algorithm, key)
        assert jws.signed_by(compact, "ES256", EC_KEY.public_key())
