"""Password hashing (argon2id) and access tokens (PyJWT); no Flask here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .greenlets import NativePool

T = TypeVar("T")

TOKEN_TYPE = "access"
# Leeway for clock skew between the instances of the fleet.
CLOCK_SKEW_LEEWAY_S = 10
# Verified access tokens a worker remembers at most (Tokens.user_id): some 300 bytes each.
VERIFIED_TOKENS_KEPT = 4096


COMMON_PASSWORDS_FILE = "data/common-passwords.txt"


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of the most common passwords (lower-cased), read once."""
    text = resources.files("photo_api").joinpath(COMMON_PASSWORDS_FILE).read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def password_weakness(password: str) -> str | None:
    """Why `password` must not be used, or None. Length is the schema's rule; this adds what length misses."""
    if len(set(password)) == 1:
        return "must not be one character repeated"
    if password.lower() in common_passwords():
        # The first guesses of every credential-stuffing list: refused whatever the length (NIST SP 800-63B 5.1.1.2).
        return "is one of the most common passwords; choose one that is not"
    return None


class Passwords:
    """argon2id hashing, on a bounded pool of native threads so a hash never stalls the other greenlets.

    Without a pool (scripts, tests of the hasher) the calling thread hashes. With one, a flood of logins
    gets PoolBusyError (503 with Retry-After) for what the pool cannot take within its queue timeout.
    """

    def __init__(self, hasher: PasswordHasher | None = None, pool: NativePool | None = None):
        # argon2-cffi's defaults are RFC 9106's low-memory profile (t=3, m=64 MiB, p=4).
        self._hasher = hasher or PasswordHasher()
        self._pool = pool
        self._dummy: str | None = None

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.run(fn, *args) if self._pool is not None else fn(*args)

    def _dummy_hash(self) -> str:
        # Verified when the e-mail is unknown, so that answer takes as long as a wrong password; made on
        # first use with the configured cost (on the pool: never on the event loop), so both cost the same.
        if self._dummy is None:
            self._dummy = self._run(self._hasher.hash, "dummy password for timing equalisation")
        return self._dummy

    def refuse_if_busy(self) -> None:
        """Raise PoolBusyError (503) at once when the hashing pool's queue is full: check before other work."""
        if self._pool is not None:
            self._pool.refuse_if_full()

    def hash(self, password: str) -> str:
        """Hash a password (argon2 never truncates, unlike bcrypt's 72 bytes)."""
        return self._run(self._hasher.hash, password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password; with `password_hash=None` spend the same time and return False."""
        try:
            return self._run(self._hasher.verify, password_hash or self._dummy_hash(), password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False


class InvalidTokenError(Exception):
    """The token is malformed, forged, expired, of another algorithm or of another type."""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int


class Tokens:
    """HS* JWTs with the algorithm pinned: `alg: none` and every other algorithm are refused."""

    def __init__(
        self,
        secret: str,
        algorithm: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        *,
        leeway: float = CLOCK_SKEW_LEEWAY_S,
    ):
        self._secret = secret
        self._algorithm = algorithm
        self._ttl = ttl_seconds
        self._clock = clock
        self._leeway = leeway
        # Tokens verified already: token -> (user id, exp). A client sends the same token with every
        # request until it expires, and PyJWT's decode (base64, JSON, HMAC, claims) was a sixth of the
        # instructions of GET /auth/me. The answer depends only on the token's bytes, the key and the
        # time: a hit checks the expiry again, and a token not verified is never kept.
        self._verified: dict[str, tuple[int, float]] = {}

    def issue(self, user_id: int) -> IssuedToken:
        """A signed access token for `user_id`."""
        now = int(self._clock())
        claims = {"sub": str(user_id), "iat": now, "exp": now + self._ttl, "type": TOKEN_TYPE}
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=self._algorithm), self._ttl)

    def user_id(self, token: str) -> int:
        """The user id a valid token was issued for; raise InvalidTokenError otherwise."""
        known = self._verified.get(token)
        if known is not None:
            user_id, expires = known
            # PyJWT's own test: expired once `exp <= now - leeway`, by the same clock (time.time).
            if expires > time.time() - self._leeway:
                return user_id
            self._verified.pop(token, None)
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                options={"require": ["exp", "iat", "sub"]},
                leeway=self._leeway,
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(type(exc).__name__) from None
        sub = claims.get("sub")
        # isascii(): str.isdigit() also accepts digits such as "²" that int() refuses.
        if claims.get("type") != TOKEN_TYPE or not isinstance(sub, str) or not (sub.isascii() and sub.isdigit()):
            raise InvalidTokenError("bad claims")
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()  # rare (tokens expire); each is verified again once
        self._verified[token] = (int(sub), float(claims["exp"]))
        return int(sub)
