"""API key format, generation and verification.

A key looks like ``tmk_<key id>_<secret>``. The key id is public (it appears in listings, audit
events and `key revoke`); the secret is 256 bits from `secrets` and is never stored. Only a
SHA-256 digest of the whole key is kept: with that much entropy a slow password hash adds cost
to every request without adding security, and comparing digests with `hmac.compare_digest`
keeps the check constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "tmk"
_KEY_RE = re.compile(r"tmk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    key: str
    digest: str


def generate() -> NewKey:
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, key=key, digest=digest(key))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_id(key: str) -> str | None:
    """The key id of a well-formed key, or None. Lets us look up one row instead of scanning."""
    match = _KEY_RE.fullmatch(key)
    return match.group(1) if match else None


def looks_like_api_key(token: str) -> bool:
    return token.startswith(PREFIX + "_")


def matches(key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(key), stored_digest)
