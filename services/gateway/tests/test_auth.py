"""The gateway checks the bearer token and the RPC's scopes before forwarding: a bad token never reaches a service, a
good one reaches it with the caller's metadata (the service verifies the same token again)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from gateway_kit import WAIT, FrontedBackend, RunningGateway, get_item, import_items, watch_stock
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.status import details_of

Gateways = Callable[..., RunningGateway]


@pytest.fixture
def gateway(make_gateway: Gateways) -> RunningGateway:
    return make_gateway()


@pytest.fixture
def backend(fronted: tuple[FrontedBackend, int]) -> FrontedBackend:
    return fronted[0]


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_a_call_without_a_token_is_unauthenticated_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: FrontedBackend
) -> None:
    error = _refusal(lambda: get_item(gateway.channel(), None))
    details = details_of(error)
    assert (details.code, details.reason, details.domain) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_MISSING",
        "gateway.storeplane",
    )
    assert backend.calls == 0


def _bad_tokens(issuer: DevIssuer, tmp_path: Path) -> dict[str, tuple[str, str]]:
    return {
        "not a JWT": ("not-a-jwt", "TOKEN_INVALID"),
        "expired": (issuer.mint(ttl_seconds=-3600), "TOKEN_EXPIRED"),
        "signed by a key the gateway does not know": (
            DevIssuer(tmp_path / "elsewhere").ensure().mint(),
            "UNKNOWN_KEY",
        ),
        "for another audience": (DevIssuer(issuer.directory, audience="someone-else").mint(), "TOKEN_INVALID"),
        "from another issuer": (DevIssuer(issuer.directory, issuer="someone-else").mint(), "TOKEN_INVALID"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "not a JWT",
        "expired",
        "signed by a key the gateway does not know",
        "for another audience",
        "from another issuer",
    ],
)
def test_a_call_with_a_bad_token_is_unauthenticated_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: FrontedBackend, issuer: DevIssuer, tmp_path: Path, kind: str
) -> None:
    token, reason = _bad_tokens(issuer, tmp_path)[kind]
    details = details_of(_refusal(lambda: get_item(gateway.channel(), token)))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert backend.calls == 0


def test_a_token_without_the_rpcs_scope_is_permission_denied_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: FrontedBackend, issuer: DevIssuer
) -> None:
    token = issuer.mint(scopes=["checkout.write"])
    details = details_of(_refusal(lambda: get_item(gateway.channel(), token)))
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE")
    assert details.metadata["scope"] == "stock.read"
    assert backend.calls == 0


def test_a_valid_token_is_forwarded_with_the_callers_metadata_intact(
    gateway: RunningGateway, backend: FrontedBackend, issuer: DevIssuer
) -> None:
    token = issuer.mint(subject="till-7", scopes=["stock.read"], stores=["berlin-mitte"])
    payload = b"\x00not a GetItemRequest the gateway could read\xff"
    metadata = (("x-store-id", "berlin-mitte"), ("x-till-bin", b"\x01\x02"))
    assert get_item(gateway.channel(), token, payload, metadata) == b"echo:" + payload
    assert backend.calls == 1
    seen = backend.state.metadata
    assert seen["authorization"] == f"Bearer {token}"  # the service verifies the same token again
    assert seen["x-store-id"] == "berlin-mitte"
    assert seen["x-till-bin"] == b"\x01\x02"
    assert seen["x-forwarded-for"] == "127.0.0.1"


def test_the_gateway_leaves_the_stores_to_the_service(
    gateway: RunningGateway, backend: FrontedBackend, issuer: DevIssuer
) -> None:
    """Bodies are never decoded at the gateway: a token for one store passes with any body (the service checks)."""
    token = issuer.mint(scopes=["stock.read"], stores=["zurich-bahnhofstrasse"])
    assert get_item(gateway.channel(), token, b"names berlin-mitte, maybe") == b"echo:names berlin-mitte, maybe"
    assert backend.calls == 1


def test_streams_are_checked_and_forwarded(gateway: RunningGateway, backend: FrontedBackend, issuer: DevIssuer) -> None:
    channel = gateway.channel()
    read, importer = issuer.mint(scopes=["stock.read"]), issuer.mint(scopes=["stock.import"])

    def rows() -> Iterator[bytes]:
        yield from (b"a", b"b")

    assert watch_stock(channel, read, b"xyz") == [b"x", b"y", b"z"]
    assert import_items(channel, importer, rows()) == b"a|b"
    assert backend.calls == 2
    assert details_of(_refusal(lambda: watch_stock(channel, None))).code is grpc.StatusCode.UNAUTHENTICATED
    refused = details_of(_refusal(lambda: import_items(channel, read, rows())))
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE")
    assert backend.calls == 2


def test_health_needs_no_token(gateway: RunningGateway) -> None:
    stub = health_pb2_grpc.HealthStub(gateway.channel())
    for service in ("", "pos.stock.v1.StockService"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _list_services(channel: grpc.Channel, token: str | None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT, metadata=metadata
    )
    return [s.name for answer in answers for s in answer.list_services_response.service]


def test_open_reflection_needs_no_token(make_gateway: Gateways) -> None:
    assert "pos.stock.v1.StockService" in _list_services(make_gateway(reflection="open").channel(), None)


def test_reflection_for_tokens_needs_a_valid_one(make_gateway: Gateways, issuer: DevIssuer) -> None:
    channel = make_gateway(reflection="token").channel()
    assert details_of(_refusal(lambda: _list_services(channel, None))).code is grpc.StatusCode.UNAUTHENTICATED
    assert "pos.stock.v1.StockService" in _list_services(channel, issuer.mint(scopes=[]))


def test_reflection_off_is_refused_even_with_a_token(make_gateway: Gateways, issuer: DevIssuer) -> None:
    channel = make_gateway(reflection="off").channel()
    error = _refusal(lambda: _list_services(channel, issuer.mint()))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED  # not served at all
