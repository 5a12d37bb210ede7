"""The webhook signature: `X-Opsflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

The timestamp is part of what is signed, so a captured request cannot be replayed once it is
older than the tolerance window, and a signature cannot be moved to another body or time. A
header may carry several `v1=` values (one per secret while the sender rotates it); any one
that matches a secret the receiver holds is enough. Pure: no I/O, the clock is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = "X-Opsflow-Signature"
DEFAULT_TOLERANCE = 300.0
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_VALUES = 8  # more v1 values than any rotation needs: refused, so a header cannot cost much


class SignatureRefused(Exception):
    """A missing, malformed, expired or wrong signature; the message is the short reason."""


@dataclass(frozen=True)
class SignedHeader:
    timestamp: int
    digests: tuple[str, ...]


def digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secrets: bytes | Iterable[bytes], body: bytes, timestamp: float | None = None) -> str:
    """The header value a sender puts on `body` (one `v1=` per secret, for rotation)."""
    keys = [secrets] if isinstance(secrets, bytes) else list(secrets)
    stamp = int(time.time() if timestamp is None else timestamp)
    return ",".join([f"t={stamp}", *(f"v1={digest(key, stamp, body)}" for key in keys)])


def parse_header(value: str | None, *, tolerance: float, now: float | None = None) -> SignedHeader:
    """The header's timestamp and digests, refused when missing, malformed or out of the window.

    Checked before the body is read, so an unsigned or stale request costs no body bytes."""
    if not value or not value.strip():
        raise SignatureRefused(f"missing {HEADER} header")
    timestamp: int | None = None
    digests: list[str] = []
    for part in value.split(","):
        key, _, item = part.strip().partition("=")
        if key == "t" and item.isascii() and item.isdigit() and len(item) <= 12:
            timestamp = int(item)
        elif key == "v1" and _HEX_SHA256.fullmatch(item):
            digests.append(item)
    if timestamp is None or not digests or len(digests) > _MAX_VALUES:
        raise SignatureRefused(f"malformed {HEADER}: expected t=<unix seconds>,v1=<hex HMAC-SHA256>")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise SignatureRefused(
            f"signature timestamp is outside the {tolerance:g} s tolerance window (expired, or a clock is wrong)"
        )
    return SignedHeader(timestamp, tuple(digests))


def verify(signed: SignedHeader, secrets: Iterable[bytes], body: bytes) -> None:
    """Raise unless one of the header's digests is the HMAC of `t.body` under one of `secrets`."""
    matched = False
    for key in secrets:
        expected = digest(key, signed.timestamp, body)
        for candidate in signed.digests:
            # Every comparison runs, so timing says nothing about which secret or value matched.
            matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        raise SignatureRefused("signature does not match the body")
