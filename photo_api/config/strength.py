"""Whether a configured secret can be trusted in production: not a placeholder, long and random enough.

A secret we choose ourselves (the JWT key, the Swift TempURL key) must be at least MIN_SECRET_BYTES long
and carry an estimated MIN_SECRET_BITS of entropy. The estimate is the Shannon entropy of the value's
own characters times the length of its shortest repeating unit, so `x` * 40 (0 bits) and `changeme` * 4
(22 bits) are refused while `secrets.token_urlsafe(48)` (about 330 bits) always passes. It is deliberately
conservative: it underestimates short random strings (a random 32-character one falls under 128 bits
about once in a few thousand draws), which the message answers by recommending 64 characters.
"""

from __future__ import annotations

import math
import re
from collections import Counter

MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 128
GENERATE_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"

# The marker of every value to replace in ops/photo-api.env.example (CHANGE-ME-...), and the other
# words a placeholder is made of; compared without case and punctuation, so `Change_Me` is caught too.
# Each has 7 letters or more: a random 64-character secret contains one by chance about once in 10^9.
PLACEHOLDER_MARKERS = ("changeme", "changethis", "replaceme", "replacethis", "placeholder", "yoursecret")
# Whole values copied from tutorials, framework templates and example files (compared the same way).
KNOWN_PLACEHOLDERS = frozenset(
    {
        "",
        "secret",
        "secretkey",
        "mysecret",
        "mysecretkey",
        "supersecret",
        "supersecretkey",
        "topsecret",
        "jwtsecret",
        "jwtsecretkey",
        "yoursecretkey",
        "yoursecretkeyhere",
        "yourjwtsecret",
        "changeme",
        "changeit",
        "password",
        "passw0rd",
        "s3cr3t",
        "default",
        "dev",
        "development",
        "test",
        "example",
        "notasecret",
        "insecure",
        "xxx",
        "xxxxxxxx",
        "todo",
        "fixme",
        "key",
        "tempurlkey",
    }
)
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]")


def _normalised(value: str) -> str:
    return _NOT_ALPHANUMERIC.sub("", value.lower())


def has_placeholder_marker(value: str) -> bool:
    """True when `value` contains a placeholder word such as CHANGE-ME (any case, any punctuation)."""
    normalised = _normalised(value)
    return any(marker in normalised for marker in PLACEHOLDER_MARKERS)


def is_placeholder(value: str) -> bool:
    """True when `value` is a well-known default secret or contains a placeholder word."""
    return _normalised(value) in KNOWN_PLACEHOLDERS or has_placeholder_marker(value)


def estimated_bits(value: str) -> float:
    """A conservative entropy estimate: bits per character (Shannon) x the shortest repeating unit's length."""
    if not value:
        return 0.0
    counts = Counter(value)
    per_char = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return per_char * _shortest_period(value)


def weakness(secret: str) -> str | None:
    """Why `secret` must not be used in production (a placeholder, too short, too predictable), or None."""
    if is_placeholder(secret):
        return "is a well-known default or placeholder value"
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        return f"must be at least {MIN_SECRET_BYTES} bytes in production (it has {size})"
    bits = estimated_bits(secret)
    if bits < MIN_SECRET_BITS:
        return f"is too predictable: about {bits:.0f} bits of entropy, at least {MIN_SECRET_BITS} needed"
    return None


def _shortest_period(value: str) -> int:
    """The length of the shortest unit whose repetition (the last one possibly cut short) makes `value`."""
    # The prefix function (Knuth-Morris-Pratt): the longest proper prefix that is also a suffix.
    border = [0] * len(value)
    for i in range(1, len(value)):
        k = border[i - 1]
        while k and value[i] != value[k]:
            k = border[k - 1]
        if value[i] == value[k]:
            k += 1
        border[i] = k
    return len(value) - border[-1]
