"""Key material and JWT building blocks shared by the auth tests.

tests/unit/test_auth.py (the policy as pure functions) and tests/test_auth_server.py (the same
policy on a real gateway) sign and forge their tokens with these. Secrets and keys are generated
once per test session, when this module is first imported; nothing secret is committed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = secrets.token_urlsafe(48)
OTHER_SECRET = secrets.token_urlsafe(48)
BYPASS = secrets.token_urlsafe(32)
DEV_TOKEN = "insecure-token-change-me"  # the token LiveStore's samples ship, on the default list
AUDIENCE = "sync.example"
ISSUER = "https://auth.example"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_pem(key: PrivateKey) -> bytes:
    """The public half of ``key`` as a SubjectPublicKeyInfo PEM (a ``public_key_files`` entry)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


RSA_PUBLIC_PEM = public_pem(RSA_KEY)


def with_token(token: str, instance: str = "device-1") -> dict[str, Any]:
    """A client's syncPayload carrying ``token``."""
    return {"instanceId": instance, "authToken": token}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with arbitrary header, claims and signature bytes."""
    return ".".join((b64(orjson.dumps(header)), b64(orjson.dumps(claims)), b64(signature)))


def forge_hs256(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes) -> str:
    """HS256 by hand (pyjwt refuses to use a PEM public key as an HMAC secret)."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def replace_claims(token: str, claims: Mapping[str, Any]) -> str:
    """``token`` with another claims segment, keeping its header and signature."""
    header, _, signature = token.split(".")
    return f"{header}.{b64(orjson.dumps(claims))}.{signature}"


def production_settings(admin_token: str, **more: Any) -> dict[str, Any]:
    """``make_gateway`` overrides for production mode (JWTs signed with :data:`SECRET`, the
    bypass token :data:`BYPASS`) with the admin API on a free loopback port."""
    return {
        "require_auth": True,
        "jwt_secret": SECRET,
        "bypass_token": BYPASS,
        "token": admin_token,
        "listen": "127.0.0.1:0",
        **more,
    }


def make_jwt(secret: str, sub: str, *, ttl: float = 3600, **claims: Any) -> str:
    """An HS256 token with ``sub`` and ``exp``."""
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(body, secret, algorithm="HS256")
