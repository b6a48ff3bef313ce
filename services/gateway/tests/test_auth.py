"""The edge (Envoy's jwt_authn) checks the bearer token before forwarding: a missing or bad one never reaches a
service, a good one reaches it with the caller's metadata. Scopes and stores are not the edge's to check any more:
every service checks them itself on the token it gets (the edge forwards it), so the fake backend here, which checks
nothing, shows only that such a token is forwarded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from gateway_kit import WAIT, FakeBackend, RunningGateway, get_item, host_addresses, import_items, watch_stock
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import wait_until

Gateways = Callable[..., RunningGateway]


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_a_call_without_a_token_is_unauthenticated_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: FakeBackend
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
    gateway: RunningGateway, backend: FakeBackend, issuer: DevIssuer, tmp_path: Path, kind: str
) -> None:
    token, reason = _bad_tokens(issuer, tmp_path)[kind]
    details = details_of(_refusal(lambda: get_item(gateway.channel(), token)))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert backend.calls == 0


def test_a_token_without_the_rpcs_scope_is_forwarded_for_the_service_to_refuse(
    gateway: RunningGateway, backend: FakeBackend, issuer: DevIssuer
) -> None:
    """The edge no longer knows the RPCs' scopes: the service refuses (PERMISSION_DENIED, MISSING_SCOPE), tested
    with the services (tests/security/test_every_rpc.py)."""
    token = issuer.mint(scopes=["checkout.write"])
    assert get_item(gateway.channel(), token) == b"echo:sku-1"
    assert backend.seen.calls == ["/pos.stock.v1.StockService/GetItem"]
    assert backend.seen.metadata["authorization"] == f"Bearer {token}"


def test_a_valid_token_is_forwarded_with_the_callers_metadata_intact(
    gateway: RunningGateway, backend: FakeBackend, issuer: DevIssuer
) -> None:
    token = issuer.mint(subject="till-7", scopes=["stock.read"], stores=["berlin-mitte"])
    payload = b"\x00not a GetItemRequest the gateway could read\xff"
    metadata = (("x-store-id", "berlin-mitte"), ("x-till-bin", b"\x01\x02"))
    assert get_item(gateway.channel(), token, payload, metadata) == b"echo:" + payload
    assert backend.calls == 1
    seen = backend.seen.metadata
    assert seen["authorization"] == f"Bearer {token}"  # the service verifies the same token again
    assert seen["x-store-id"] == "berlin-mitte"
    assert seen["x-till-bin"] == b"\x01\x02"
    assert seen["x-forwarded-for"] in host_addresses()  # Envoy's, for a caller on loopback
    assert seen["x-storeplane-subject"] == "till-7"  # the verified subject, set by the edge


def test_the_gateway_leaves_the_stores_to_the_service(
    gateway: RunningGateway, backend: FakeBackend, issuer: DevIssuer
) -> None:
    """Bodies are never decoded at the gateway: a token for one store passes with any body (the service checks)."""
    token = issuer.mint(scopes=["stock.read"], stores=["zurich-bahnhofstrasse"])
    assert get_item(gateway.channel(), token, b"names berlin-mitte, maybe") == b"echo:names berlin-mitte, maybe"
    assert backend.calls == 1


def test_streams_are_checked_and_forwarded(gateway: RunningGateway, backend: FakeBackend, issuer: DevIssuer) -> None:
    channel = gateway.channel()
    read, importer = issuer.mint(scopes=["stock.read"]), issuer.mint(scopes=["stock.import"])

    def rows() -> Iterator[bytes]:
        yield from (b"a", b"b")

    assert watch_stock(channel, read, b"xyz") == [b"x", b"y", b"z"]
    assert import_items(channel, importer, rows()) == b"a|b"
    assert backend.calls == 2
    for refused in (lambda: watch_stock(channel, None), lambda: import_items(channel, "not-a-jwt", rows())):
        assert details_of(_refusal(refused)).code is grpc.StatusCode.UNAUTHENTICATED
    assert backend.calls == 2


def test_a_subject_header_sent_by_the_caller_is_replaced_by_the_tokens(
    gateway: RunningGateway, backend: FakeBackend, issuer: DevIssuer
) -> None:
    token = issuer.mint(subject="till-honest")
    get_item(gateway.channel(), token, metadata=(("x-storeplane-subject", "till-someone-else"),))
    assert backend.seen.metadata["x-storeplane-subject"] == "till-honest"


def _health(channel: grpc.Channel, service: str = "") -> int:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
    return int(answer.status)


def test_health_needs_no_token(gateway: RunningGateway, backend: FakeBackend) -> None:
    channel = gateway.channel()
    for service in ("", "pos.stock.v1.StockService"):
        assert _health(channel, service) == health_pb2.HealthCheckResponse.SERVING
    assert backend.calls == 0  # answered by the edge's companion, not forwarded


def test_health_turns_not_serving_when_the_backend_stops(make_gateway: Gateways) -> None:
    own = FakeBackend()
    server, port = own.serve()
    try:
        channel = make_gateway(backend_port=port).channel()
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        server.stop(None)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_until(lambda: _health(channel) == not_serving, timeout=WAIT, what="the edge NOT_SERVING")
        assert _health(channel, "pos.stock.v1.StockService") == not_serving
    finally:
        server.stop(None)


def _list_services(channel: grpc.Channel, token: str | None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT, metadata=metadata
    )
    return [s.name for answer in answers for s in answer.list_services_response.service]


def test_open_reflection_needs_no_token(gateway_with: Gateways) -> None:
    services = _list_services(gateway_with(reflection="open").channel(), None)
    assert {"pos.stock.v1.StockService", "pos.customer.v1.CustomerService"} <= set(services)


def test_reflection_for_tokens_needs_a_valid_one(gateway_with: Gateways, issuer: DevIssuer) -> None:
    channel = gateway_with(reflection="token").channel()
    assert details_of(_refusal(lambda: _list_services(channel, None))).code is grpc.StatusCode.UNAUTHENTICATED
    assert "pos.stock.v1.StockService" in _list_services(channel, issuer.mint(scopes=[]))


def test_reflection_off_is_refused_even_with_a_token(gateway_with: Gateways, issuer: DevIssuer) -> None:
    channel = gateway_with(reflection="off").channel()
    error = _refusal(lambda: _list_services(channel, issuer.mint()))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED  # no route: Envoy's 404
