"""Key rotation while the stack runs: the JWKS file gains a new key, later loses the old one; tokens follow without a
restart, in a service and in the gateway."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.auth.issuer import declared_scopes
from storeplane_runtime.status import details_of

from .conftest import start_stack


def _jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, object]:
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid=kid, use="sig", alg="ES256")
    return public


def _token(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "storeplane-dev",
        "aud": "storeplane",
        "sub": f"signed-by-{kid}",
        "iat": now,
        "exp": now + 600,
        "scope": " ".join(sorted(declared_scopes())),
        "stores": ["*"],
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def _code(address: str, token: str) -> grpc.StatusCode:
    request = stock_pb2.GetAvailabilityRequest(store_id="berlin-mitte", skus=["NONE"])
    with with_bearer(grpc.insecure_channel(address), token) as channel:
        try:
            stock_pb2_grpc.StockServiceStub(channel).GetAvailability(request, timeout=5)
        except grpc.RpcError as error:
            return details_of(error).code
    return grpc.StatusCode.OK


def _eventually(address: str, token: str, code: grpc.StatusCode) -> None:
    deadline = time.monotonic() + 10
    while (got := _code(address, token)) != code:
        assert time.monotonic() < deadline, f"{address}: still {got.name}, expected {code.name}"
        time.sleep(0.1)


def test_tokens_follow_the_jwks_file_without_a_restart(tmp_path: Path) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(old, "old")]}))
    stack = start_stack(tmp_path, auth_jwks_file=str(jwks))
    try:
        addresses = [stack.address("stock"), stack.address("gateway")]
        for address in addresses:
            assert _code(address, _token(old, "old")) == grpc.StatusCode.OK
            assert _code(address, _token(new, "new")) == grpc.StatusCode.UNAUTHENTICATED

        jwks.write_text(json.dumps({"keys": [_jwk(old, "old"), _jwk(new, "new")]}))
        for address in addresses:
            _eventually(address, _token(new, "new"), grpc.StatusCode.OK)
            assert _code(address, _token(old, "old")) == grpc.StatusCode.OK

        jwks.write_text(json.dumps({"keys": [_jwk(new, "new")]}))
        for address in addresses:
            _eventually(address, _token(old, "old"), grpc.StatusCode.UNAUTHENTICATED)
            assert _code(address, _token(new, "new")) == grpc.StatusCode.OK
    finally:
        for app in reversed(list(stack.apps.values())):
            app.stop(0)
