"""JWS compact serialization (RFC 7515 §7.1), pure: split, decode, check one signature.

A handshake verifies a JWT, and pyjwt's ``decode`` spent most of that verification outside the
cryptography: it checks each base64url character in a Python generator (twice per segment,
with the header read a second time for the key lookup) and re-runs its option handling on every
call. Here a token is split and decoded once, with one regular expression for the alphabet
and C codecs for the rest; the signature is still checked by pyjwt's algorithm objects (HMAC
through :mod:`hmac`, the public-key families through ``cryptography``), and the claims by
:func:`gateway.auth.policy.verify_jwt`.

What is refused here, as pyjwt refuses it: anything but three dot-separated base64url
segments (no other characters, no wrong padding, no non-canonical trailing bits); a header or
payload that is not a JSON object; a ``kid`` that is not a string; and any ``crit`` header,
since no extension is understood (RFC 7515 §4.1.11; the only one pyjwt knows, ``b64``, means a
detached payload a sync client never sends).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, NamedTuple

import orjson
from jwt import PyJWK
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError

# Three segments of the base64url alphabet; the header is never empty. Padding is not part
# of the format, but some issuers (AWS ALB) send it: accepted when it is correct.
_COMPACT = re.compile(r"([A-Za-z0-9_-]+={0,2})\.([A-Za-z0-9_-]*={0,2})\.([A-Za-z0-9_-]*={0,2})")

_ALGORITHMS = get_default_algorithms()


class Compact(NamedTuple):
    """A token's parts; the header and claims as decoded, none of them verified yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _segment(text: str) -> bytes | None:
    """One base64url segment, decoded; None unless it is the canonical encoding."""
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1 or (stripped != text and len(text) % 4):
        return None
    raw = stripped.encode("ascii")
    try:
        decoded = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except binascii.Error:
        return None
    # Unused trailing bits must be zero: one token, one encoding.
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != raw:
        return None
    return decoded


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse(token: str) -> Compact | None:
    """``token``'s header, claims, signing input and signature; None if it is malformed."""
    match = _COMPACT.fullmatch(token)
    if match is None:
        return None
    header_text, claims_text, signature_text = match.groups()
    header_bytes = _segment(header_text)
    claims_bytes = _segment(claims_text)
    signature = _segment(signature_text)
    if header_bytes is None or claims_bytes is None or signature is None:
        return None
    header = _object(header_bytes)
    if header is None or "crit" in header:
        return None
    if "kid" in header and not isinstance(header["kid"], str):
        return None
    claims = _object(claims_bytes)
    if claims is None:
        return None
    signing_input = token[: match.end(2)].encode("ascii")
    return Compact(header, claims, signing_input, signature)


def signed_by(compact: Compact, algorithm: str, key: Any) -> bool:
    """Whether ``key`` made ``compact``'s signature with ``algorithm``.

    ``key`` is a :class:`jwt.PyJWK` (bound to its algorithm: another one never matches) or a
    raw key pyjwt's algorithm prepares (bytes for HMAC, a ``cryptography`` public key). A key
    that cannot serve the algorithm (another family or curve) is no match, never an error.
    """
    try:
        if isinstance(key, PyJWK):
            if key.algorithm_name != algorithm:
                return False
            implementation = key.Algorithm
            prepared = implementation.prepare_key(key.key)
        else:
            implementation = _ALGORITHMS[algorithm]
            prepared = implementation.prepare_key(key)
        return bool(implementation.verify(compact.signing_input, prepared, compact.signature))
    except (InvalidKeyError, KeyError, TypeError, ValueError):
        return False
