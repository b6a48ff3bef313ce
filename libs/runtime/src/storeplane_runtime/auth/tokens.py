"""Bearer JWTs verified into an `Identity`: RS256 or ES256 only, issuer, audience, times with a small leeway and a
key id required; a verified token is remembered (by hash) until it expires or the keys change."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any

import jwt

from storeplane_runtime.auth.keys import KEY_TYPES, KeySet
from storeplane_runtime.identity import Identity

__all__ = ["TokenRefused", "TokenVerifier"]

MAX_TOKEN_BYTES = 16_384  # a header that large is an attack, not a token


class TokenRefused(Exception):
    """The token is missing or not acceptable; `reason` is stable (UNAUTHENTICATED's ErrorInfo reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TokenVerifier:
    """Verifies bearer tokens against the issuer's keys and the expected issuer and audience."""

    def __init__(
        self, keys: KeySet, *, issuer: str, audience: str, leeway_seconds: float = 30.0, cache_size: int = 10_000
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[Identity, int]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> Identity:
        """The identity of a valid token; TokenRefused naming why not otherwise."""
        if not token:
            raise TokenRefused("TOKEN_MISSING", "a bearer token is required (authorization: Bearer <jwt>)")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused("TOKEN_INVALID", "the token is too large")
        self.keys.refresh_if_due()
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                identity, generation = cached
                if generation == self.keys.generation:  # new keys: a key may have been withdrawn, check again
                    if now <= identity.expires_at + self.leeway:
                        self._cache.move_to_end(digest)
                        return identity
                    del self._cache[digest]
                    raise TokenRefused("TOKEN_EXPIRED", "the token has expired")
        identity = self._decode(token)
        with self._lock:
            self._cache[digest] = (identity, self.keys.generation)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return identity

    def _decode(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("TOKEN_INVALID", "the token is not a JWT") from None
        alg = header.get("alg")
        if alg not in KEY_TYPES:  # "none", HS256 (the public-key-as-HMAC-secret trick) and all others
            raise TokenRefused("TOKEN_INVALID", f"signing algorithm {str(alg)[:20]!r} is not accepted (RS256, ES256)")
        kid = header.get("kid")
        if not kid or not isinstance(kid, str):
            raise TokenRefused("TOKEN_INVALID", "the token names no key id (kid)")
        key = self.keys.key_for(kid)
        if key is None:
            raise TokenRefused("UNKNOWN_KEY", f"no signing key {kid[:64]!r} is known")
        if key.key_type != KEY_TYPES[alg]:
            raise TokenRefused("TOKEN_INVALID", f"key {kid[:64]!r} is not a {KEY_TYPES[alg]} key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("TOKEN_EXPIRED", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("TOKEN_NOT_YET_VALID", "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("TOKEN_INVALID", "the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("TOKEN_INVALID", "the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("TOKEN_INVALID", "the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenRefused("TOKEN_INVALID", f"the token is not valid: {str(exc)[:200]}") from None
        return _identity(claims)


def _identity(claims: dict[str, Any]) -> Identity:
    subject, scope, stores = claims.get("sub"), claims.get("scope", ""), claims.get("stores", [])
    if not isinstance(subject, str) or not subject:
        raise TokenRefused("TOKEN_INVALID", "the token's subject (sub) must be a non-empty string")
    if not isinstance(scope, str):
        raise TokenRefused("TOKEN_INVALID", "the token's scope must be a space-separated string")
    if not isinstance(stores, list) or not all(isinstance(s, str) for s in stores):
        raise TokenRefused("TOKEN_INVALID", "the token's stores must be a list of store ids")
    return Identity(subject, frozenset(scope.split()), frozenset(stores), float(claims["exp"]))
