"""The development issuer: a local key pair under `<data dir>/auth/` (`dev-signing-key.pem`, `jwks.json`), made on
first start of `make run` / `make up`, and tokens minted from it. Nothing in production uses it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from storeplane_runtime.identity import ALL_STORES

__all__ = ["DEFAULT_AUDIENCE", "DEFAULT_ISSUER", "DevIssuer", "declared_scopes"]

DEFAULT_ISSUER = "storeplane-dev"
DEFAULT_AUDIENCE = "storeplane"
KEY_FILE = "dev-signing-key.pem"
JWKS_FILE = "jwks.json"


class DevIssuer:
    """An ES256 key pair in `directory`, and tokens signed with it."""

    def __init__(
        self, directory: str | Path, *, issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE
    ) -> None:
        self.directory = Path(directory)
        self.issuer, self.audience = issuer, audience

    @property
    def jwks_file(self) -> Path:
        return self.directory / JWKS_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    def ensure(self) -> DevIssuer:
        """Make the key pair and its JWKS unless they exist (replicas starting at once: the first one wins)."""
        if self.key_file.exists() and self.jwks_file.exists():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        self._write_jwks(key)
        return self

    def _write_jwks(self, key: ec.EllipticCurvePrivateKey) -> None:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        public.update(kid=self.key_id(key), use="sig", alg="ES256")
        temporary = self.jwks_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"keys": [public]}, indent=2))
        temporary.replace(self.jwks_file)  # readers never see half a file

    @staticmethod
    def key_id(key: ec.EllipticCurvePrivateKey) -> str:
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()[:16]

    def mint(
        self,
        *,
        subject: str = "developer",
        scopes: Iterable[str] | None = None,
        stores: Iterable[str] = (ALL_STORES,),
        ttl_seconds: float = 12 * 3600,
        now: float | None = None,
    ) -> str:
        """A signed token (a negative TTL mints an expired one, for tests); default scopes: all any RPC declares."""
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": issued if ttl_seconds > 0 else issued + int(ttl_seconds) - 60,
            "exp": issued + int(ttl_seconds),
            "scope": " ".join(sorted(scopes if scopes is not None else declared_scopes())),
            "stores": sorted(set(stores)),
        }
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": self.key_id(key)})


def declared_scopes() -> set[str]:
    """Every scope any RPC of the pos.*.v1 services declares."""
    from pos.checkout.v1 import checkout_pb2
    from pos.common.v1 import options_pb2
    from pos.customer.v1 import customer_pb2
    from pos.loyalty.v1 import loyalty_pb2
    from pos.stock.v1 import stock_pb2

    scopes: set[str] = set()
    for module in (checkout_pb2, stock_pb2, customer_pb2, loyalty_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(options_pb2.auth):
                    scopes.update(options.Extensions[options_pb2.auth].scopes)
    return scopes
