"""Bearer tokens: only RS256/ES256 from a known key of the configured issuer, for our audience, within their times;
keys rotate without a restart, from a file or a URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.auth.keys import KeySet, KeySetError
from storeplane_runtime.auth.tokens import TokenRefused, TokenVerifier

ISSUER, AUDIENCE = "storeplane-dev", "storeplane"


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path / "auth").ensure()


@pytest.fixture
def verifier(issuer: DevIssuer) -> TokenVerifier:
    return TokenVerifier(KeySet(file=str(issuer.jwks_file)), issuer=ISSUER, audience=AUDIENCE, leeway_seconds=30)


def _private(issuer: DevIssuer) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(issuer.key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "till-7", "iat": now, "exp": now + 600, "scope": "stock.read"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _part(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(token)
    return refused.value.reason


def test_a_valid_token_gives_its_subject_scopes_and_stores(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    token = issuer.mint(subject="edge-berlin", scopes=["stock.read", "checkout.write"], stores=["berlin-mitte"])
    identity = verifier.verify(token)
    assert identity.subject == "edge-berlin"
    assert identity.scopes == {"stock.read", "checkout.write"}
    assert identity.may_act_for("berlin-mitte") and not identity.may_act_for("zurich-bahnhofstrasse")
    assert verifier.verify(token) is identity  # remembered


def test_all_stores_token(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    identity = verifier.verify(issuer.mint(stores=["*"]))
    assert identity.all_stores and identity.may_act_for("anywhere")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "TOKEN_EXPIRED"),
        ({"nbf": int(time.time()) + 600}, "TOKEN_NOT_YET_VALID"),
        ({"iat": int(time.time()) + 600}, "TOKEN_NOT_YET_VALID"),
        ({"iss": "someone-else"}, "TOKEN_INVALID"),
        ({"aud": "another-api"}, "TOKEN_INVALID"),
        ({"sub": None}, "TOKEN_INVALID"),
        ({"exp": None}, "TOKEN_INVALID"),
        ({"stores": "berlin-mitte"}, "TOKEN_INVALID"),
    ],
)
def test_claims_out_of_bounds_are_refused(
    issuer: DevIssuer, verifier: TokenVerifier, changes: dict[str, Any], reason: str
) -> None:
    key = _private(issuer)
    token = jwt.encode(_claims(**changes), key, algorithm="ES256", headers={"kid": issuer.key_id(key)})
    assert _refusal(verifier, token) == reason


def test_times_within_the_leeway_are_accepted(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    key = _private(issuer)
    now = int(time.time())
    token = jwt.encode(
        _claims(exp=now - 10, nbf=now + 10, iat=now + 10), key, algorithm="ES256", headers={"kid": issuer.key_id(key)}
    )
    assert verifier.verify(token).subject == "till-7"


def test_an_expired_token_that_was_remembered_is_refused_once_it_expires(issuer: DevIssuer) -> None:
    verifier = TokenVerifier(KeySet(file=str(issuer.jwks_file)), issuer=ISSUER, audience=AUDIENCE, leeway_seconds=0)
    key = _private(issuer)
    token = jwt.encode(_claims(exp=int(time.time()) + 1), key, algorithm="ES256", headers={"kid": issuer.key_id(key)})
    verifier.verify(token)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    while time.time() <= expires:  # bounded: exp is at most two seconds away
        time.sleep(0.05)
    assert _refusal(verifier, token) == "TOKEN_EXPIRED"


def test_alg_none_is_refused(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": issuer.key_id(_private(issuer))}
    assert _refusal(verifier, f"{_part(header)}.{_part(_claims())}.") == "TOKEN_INVALID"


def test_hs256_signed_with_the_public_key_is_refused(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    key = _private(issuer)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Forged by hand: pyjwt itself refuses a PEM as an HMAC secret, an attacker's library need not.
    signing_input = f"{_part({'alg': 'HS256', 'typ': 'JWT', 'kid': issuer.key_id(key)})}.{_part(_claims())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert _refusal(verifier, token) == "TOKEN_INVALID"


def test_an_unknown_kid_a_missing_kid_and_a_foreign_signature_are_refused(
    issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    kid = issuer.key_id(_private(issuer))
    assert _refusal(verifier, jwt.encode(_claims(), stranger, algorithm="ES256", headers={"kid": "nope"})) == (
        "UNKNOWN_KEY"
    )
    assert _refusal(verifier, jwt.encode(_claims(), stranger, algorithm="ES256")) == "TOKEN_INVALID"
    assert _refusal(verifier, jwt.encode(_claims(), stranger, algorithm="ES256", headers={"kid": kid})) == (
        "TOKEN_INVALID"
    )
    assert _refusal(verifier, "not-a-jwt") == "TOKEN_INVALID"
    assert _refusal(verifier, "") == "TOKEN_MISSING"


def test_an_rs256_token_needs_an_rsa_key(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    public.update(kid="rsa-1", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    verifier = TokenVerifier(KeySet(file=str(jwks)), issuer=ISSUER, audience=AUDIENCE)
    assert verifier.verify(jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})).subject
    ec_key = ec.generate_private_key(ec.SECP256R1())
    assert _refusal(verifier, jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})) == (
        "TOKEN_INVALID"
    )


def _jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid=kid, use="sig")
    return public


def test_key_rotation_in_the_file_needs_no_restart(tmp_path: Path) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(old, "old")]}))
    verifier = TokenVerifier(KeySet(file=str(jwks)), issuer=ISSUER, audience=AUDIENCE)
    by_old = jwt.encode(_claims(), old, algorithm="ES256", headers={"kid": "old"})
    by_new = jwt.encode(_claims(sub="after"), new, algorithm="ES256", headers={"kid": "new"})
    assert verifier.verify(by_old).subject == "till-7"
    jwks.write_text(json.dumps({"keys": [_jwk(old, "old"), _jwk(new, "new")]}))
    assert verifier.verify(by_new).subject == "after"  # an unknown kid looks at the file at once
    jwks.write_text(json.dumps({"keys": [_jwk(new, "new")]}))
    deadline = time.monotonic() + 10
    reason = ""
    while not reason and time.monotonic() < deadline:
        try:
            verifier.verify(by_old)
            time.sleep(0.1)
        except TokenRefused as refused:
            reason = refused.reason
    assert reason == "UNKNOWN_KEY", "a token of a withdrawn key was still accepted"
    assert verifier.verify(by_new).subject == "after"


def test_a_symmetric_key_in_the_jwks_is_never_used(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(
        json.dumps({"keys": [{"kty": "oct", "kid": "k", "k": base64.urlsafe_b64encode(b"s" * 32).decode()}]})
    )
    verifier = TokenVerifier(KeySet(file=str(jwks)), issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(_claims(), "s" * 32, algorithm="HS256", headers={"kid": "k"})
    assert _refusal(verifier, token) == "TOKEN_INVALID"


def test_a_missing_key_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(KeySetError, match="AUTH_JWKS_FILE"):
        KeySet(file=str(tmp_path / "absent.json"))
    with pytest.raises(KeySetError, match="exactly one"):
        KeySet()


class _JwksServer:
    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys, self.fetches = keys, 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.fetches += 1
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    old = ec.generate_private_key(ec.SECP256R1())
    served = _JwksServer([_jwk(old, "old")])
    served.old = old  # type: ignore[attr-defined]
    yield served
    served.server.shutdown()


def test_keys_from_a_url_are_refetched_for_an_unknown_kid_at_most_once_per_interval(
    jwks_server: _JwksServer,
) -> None:
    keys = KeySet(url=jwks_server.url, refresh_seconds=0.5, max_age_seconds=300)
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)
    old = jwks_server.old  # type: ignore[attr-defined]
    assert verifier.verify(jwt.encode(_claims(), old, algorithm="ES256", headers={"kid": "old"}))
    assert jwks_server.fetches == 1
    stranger = ec.generate_private_key(ec.SECP256R1())
    for i in range(20):  # a flood of made-up kids within the interval: no flood of fetches
        token = jwt.encode(_claims(), stranger, algorithm="ES256", headers={"kid": f"made-up-{i}"})
        assert _refusal(verifier, token) == "UNKNOWN_KEY"
    assert jwks_server.fetches <= 2
    new = ec.generate_private_key(ec.SECP256R1())
    jwks_server.keys.append(_jwk(new, "new"))
    by_new = jwt.encode(_claims(sub="rotated"), new, algorithm="ES256", headers={"kid": "new"})
    deadline = time.monotonic() + 10
    while True:
        try:
            assert verifier.verify(by_new).subject == "rotated"
            break
        except TokenRefused:
            assert time.monotonic() < deadline, "the new key was never fetched"
            time.sleep(0.1)
