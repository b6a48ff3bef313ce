"""Every RPC of every service, generated from the descriptors (a new RPC is covered without a new test), called
directly and through the gateway: each bad token is UNAUTHENTICATED with its reason, a missing scope and another
store's data PERMISSION_DENIED, and a valid token gets past authorisation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from pos.checkout.v1 import checkout_pb2
from pos.customer.v1 import customer_pb2
from pos.loyalty.v1 import loyalty_pb2
from pos.stock.v1 import stock_pb2
from storeplane_runtime.auth.issuer import declared_scopes
from storeplane_runtime.auth.rules import MethodRule, method_rules
from storeplane_runtime.status import ErrorDetails, details_of
from storeplane_runtime.testing import TestAuthority

from .conftest import Stack

OWN, OTHER = "berlin-mitte", "zurich-bahnhofstrasse"
SERVICES = {
    "checkout": checkout_pb2.DESCRIPTOR.services_by_name["CheckoutService"],
    "stock": stock_pb2.DESCRIPTOR.services_by_name["StockService"],
    "customer": customer_pb2.DESCRIPTOR.services_by_name["CustomerService"],
    "loyalty": loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"],
}
RULES = method_rules(SERVICES.values())
RPCS = [(process, method) for process, service in SERVICES.items() for method in service.methods]
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _request(method: MethodDescriptor, store: str, *, repeated_store: str | None = None) -> Message:
    """A request naming `store` at every store path (in a repeated field: one element, of `repeated_store` if
    given)."""
    message = message_factory.GetMessageClass(method.input_type)()
    if "request_id" in message.DESCRIPTOR.fields_by_name:
        message.request_id = str(uuid.uuid4())  # type: ignore[attr-defined]
    for path in RULES[_path(method)].store_paths:
        _set(message, path, store, repeated_store)
    return message


def _set(message: Message, path: Sequence[str], store: str, repeated_store: str | None) -> None:
    field = message.DESCRIPTOR.fields_by_name[path[0]]
    if len(path) == 1:
        setattr(message, path[0], store)
    elif field.is_repeated:
        _set(getattr(message, path[0]).add(), path[1:], repeated_store or store, None)
    else:
        _set(getattr(message, path[0]), path[1:], store, repeated_store)


def _call(channel: grpc.Channel, method: MethodDescriptor, requests: list[Message], token: str) -> ErrorDetails:
    response = message_factory.GetMessageClass(method.output_type)
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response.FromString,
    }
    metadata = [("authorization", f"Bearer {token}")] if token else []
    path = _path(method)
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **kwargs)(iter(requests), metadata=metadata, timeout=3))
        elif method.client_streaming:
            channel.stream_unary(path, **kwargs)(iter(requests), metadata=metadata, timeout=3)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, **kwargs)(requests[0], metadata=metadata, timeout=1):
                break
        else:
            channel.unary_unary(path, **kwargs)(requests[0], metadata=metadata, timeout=3)
    except grpc.RpcError as error:
        return details_of(error)
    return ErrorDetails(grpc.StatusCode.OK, "")


def _forged(authority: TestAuthority) -> dict[str, tuple[str, str]]:
    """Tokens that must not pass, with the reason each is refused for."""
    key = serialization.load_pem_private_key(authority.issuer.key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    kid = authority.issuer.key_id(key)
    now = int(time.time())
    claims = {
        "iss": "storeplane-dev",
        "aud": "storeplane",
        "sub": "forger",
        "iat": now,
        "exp": now + 600,
        "scope": " ".join(sorted(declared_scopes())),
        "stores": ["*"],
    }

    def signed(key_: Any = key, headers: dict[str, str] | None = None, **changes: Any) -> str:
        return jwt.encode({**claims, **changes}, key_, algorithm="ES256", headers=headers or {"kid": kid})

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{part(claims)}"
    hs_signature = base64.urlsafe_b64encode(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())
    stranger = ec.generate_private_key(ec.SECP256R1())
    return {
        "no token": ("", "TOKEN_MISSING"),
        "expired": (authority.token(ttl_seconds=-600), "TOKEN_EXPIRED"),
        "not yet valid": (signed(nbf=now + 600), "TOKEN_NOT_YET_VALID"),
        "wrong issuer": (signed(iss="someone-else"), "TOKEN_INVALID"),
        "wrong audience": (signed(aud="another-api"), "TOKEN_INVALID"),
        "bad signature": (signed(stranger), "TOKEN_INVALID"),
        "alg none": (f"{part({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{part(claims)}.", "TOKEN_INVALID"),
        "HS256 with the public key": (f"{hs_input}.{hs_signature.rstrip(b'=').decode()}", "TOKEN_INVALID"),
        "unknown kid": (signed(stranger, headers={"kid": "never-issued"}), "UNKNOWN_KEY"),
    }


# Envoy's jwt_authn says only that no key of the JWKS matches the token's kid and algorithm: at the edge an HS256
# token naming our key id reads UNKNOWN_KEY, where a service, which looks at the algorithm first, says TOKEN_INVALID.
EDGE_REASONS = {"HS256 with the public key": "UNKNOWN_KEY"}


@pytest.fixture(params=["direct", "gateway"])
def route(request: pytest.FixtureRequest, stack: Stack) -> tuple[str, Stack]:
    return request.param, stack


def _channel(stack: Stack, route: str, process: str) -> grpc.Channel:
    return grpc.insecure_channel(stack.address(process if route == "direct" else "gateway"))


@pytest.mark.parametrize(("process", "method"), RPCS, ids=[f"{p}.{m.name}" for p, m in RPCS])
def test_every_rpc_refuses_bad_tokens_missing_scopes_and_other_stores(
    route: tuple[str, Stack], authority: TestAuthority, process: str, method: MethodDescriptor
) -> None:
    how, stack = route
    rule: MethodRule = RULES[_path(method)]
    own = [_request(method, OWN)]
    with _channel(stack, how, process) as channel:
        for case, (token, reason) in _forged(authority).items():
            reason = EDGE_REASONS.get(case, reason) if how == "gateway" else reason
            got = _call(channel, method, own, token)
            assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason), f"{case}: {got}"

        for scope in rule.scopes:
            lacking = authority.token(scopes=declared_scopes() - {scope}, stores=[OWN])
            got = _call(channel, method, own, lacking)
            assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE"), got
            assert got.metadata["scope"] == scope

        valid = authority.token(scopes=rule.scopes, stores=[OWN])
        got = _call(channel, method, own, valid)
        assert got.code not in DENIED, f"a valid token was refused: {got}"
        built = got.code != grpc.StatusCode.UNIMPLEMENTED  # a service not built yet reads no stream past the first

        if not rule.store_scoped:
            return
        denied = (grpc.StatusCode.PERMISSION_DENIED, "STORE_NOT_ALLOWED")
        got = _call(channel, method, [_request(method, OTHER)], valid)
        assert (got.code, got.reason) == denied, f"another store's request: {got}"
        if method.client_streaming and built:
            got = _call(channel, method, [_request(method, OWN), _request(method, OTHER)], valid)
            assert (got.code, got.reason) == denied, f"another store in a later stream message: {got}"
        if any(_through_repeated(method, path) for path in rule.store_paths):
            got = _call(channel, method, [_request(method, OWN, repeated_store=OTHER)], valid)
            assert (got.code, got.reason) == denied, f"another store in one element of a repeated field: {got}"


def _through_repeated(method: MethodDescriptor, path: Sequence[str]) -> bool:
    descriptor = method.input_type
    for name in path[:-1]:
        field = descriptor.fields_by_name[name]
        if field.is_repeated:
            return True
        descriptor = field.message_type
    return False


def test_health_needs_no_token(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for process in (*SERVICES, "gateway"):
        with grpc.insecure_channel(stack.address(process)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
