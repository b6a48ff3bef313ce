"""The interceptor on a real server: an undeclared RPC is refused, health is open, reflection as configured,
refusals are audited (never the token) and counted, and the verified identity is current in the handler."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import ON_BEHALF_OF, with_bearer
from storeplane_runtime.errors import NotFound, StoreNotAllowed
from storeplane_runtime.identity import Identity, acting_as, allowed_stores, check_owner, current_identity
from storeplane_runtime.server import ServiceHost, ServiceRegistration
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import test_authority

STOCK = stock_pb2.DESCRIPTOR.services_by_name["StockService"].full_name


class _Seen(stock_pb2_grpc.StockServiceServicer):
    def __init__(self) -> None:
        self.identities: list[Identity | None] = []
        self.metadata: list[dict[str, str]] = []

    def GetAvailability(self, request: object, context: grpc.ServicerContext) -> stock_pb2.GetAvailabilityResponse:
        self.identities.append(current_identity())
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return stock_pb2.GetAvailabilityResponse(unknown_skus=["X"])


def _host(reflection: str, servicer: _Seen, extra: grpc.GenericRpcHandler | None = None) -> ServiceHost:
    settings = ServiceSettings(
        service_name="stock",
        grpc_host="127.0.0.1",
        grpc_port=0,
        auth_jwks_file=test_authority().jwks_file,
        reflection=reflection,  # type: ignore[arg-type]
    )
    registration = ServiceRegistration(STOCK, stock_pb2_grpc.add_StockServiceServicer_to_server, servicer)
    return ServiceHost(settings, registrations=[registration], generic_handlers=[extra] if extra else ())


@pytest.fixture(params=["open", "token", "off"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, _Seen]]:
    undeclared = grpc.method_handlers_generic_handler(
        "test.v1.Undeclared", {"Call": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
    )
    seen = _Seen()
    host = _host(request.param, seen, undeclared)
    port = host.start()
    yield request.param, port, seen
    host.stop(0)


def _list_services(channel: grpc.Channel) -> grpc.StatusCode:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    try:
        for _ in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5):
            return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_health_open_reflection_as_configured_and_undeclared_refused(served: tuple[str, int, _Seen]) -> None:
    mode, port, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as anonymous:
        health = health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        expected = {
            "open": grpc.StatusCode.OK,
            "token": grpc.StatusCode.UNAUTHENTICATED,
            "off": grpc.StatusCode.UNIMPLEMENTED,
        }[mode]
        assert _list_services(anonymous) == expected
    with with_bearer(grpc.insecure_channel(f"127.0.0.1:{port}"), test_authority().token(scopes=[])) as tokened:
        assert _list_services(tokened) == (grpc.StatusCode.UNIMPLEMENTED if mode == "off" else grpc.StatusCode.OK)
        with pytest.raises(grpc.RpcError) as raised:
            tokened.unary_unary("/test.v1.Undeclared/Call")(b"x", timeout=5)
        got = details_of(raised.value)
        assert (got.code, got.reason) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_DECLARED")


def test_the_handler_sees_the_verified_identity_and_the_end_callers_subject(
    served: tuple[str, int, _Seen],
) -> None:
    _, port, seen = served
    token = test_authority().token(subject="checkout", scopes=["stock.read"])
    with (
        with_bearer(grpc.insecure_channel(f"127.0.0.1:{port}"), token) as channel,
        acting_as(Identity("till-7", frozenset(), frozenset({"berlin-mitte"}))),
    ):
        request = stock_pb2.GetAvailabilityRequest(store_id="berlin-mitte", skus=["X"])
        stock_pb2_grpc.StockServiceStub(channel).GetAvailability(request, timeout=5)
    (identity,) = seen.identities
    assert identity is not None and identity.subject == "checkout" and identity.all_stores
    assert seen.metadata[0][ON_BEHALF_OF] == "till-7"  # for the audit log only: the token is the authority
    assert current_identity() is None  # nothing leaks out of the call


def test_a_refusal_is_audited_without_the_token_and_counted(
    served: tuple[str, int, _Seen], caplog: pytest.LogCaptureFixture
) -> None:
    _, port, _ = served
    method = "/pos.stock.v1.StockService/GetAvailability"
    before = (
        REGISTRY.get_sample_value("storeplane_auth_refused_total", {"method": method, "reason": "STORE_NOT_ALLOWED"})
        or 0.0
    )
    token = test_authority().token(subject="edge-zurich", scopes=["stock.read"], stores=["zurich-bahnhofstrasse"])
    request = stock_pb2.GetAvailabilityRequest(store_id="berlin-mitte", skus=["X"])
    with (
        caplog.at_level(logging.WARNING, logger="storeplane.audit"),
        with_bearer(grpc.insecure_channel(f"127.0.0.1:{port}"), token) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        stock_pb2_grpc.StockServiceStub(channel).GetAvailability(request, timeout=5)
    assert details_of(raised.value).reason == "STORE_NOT_ALLOWED"
    (record,) = [r for r in caplog.records if r.name == "storeplane.audit"]
    assert (record.subject, record.grpc_method, record.store_id, record.reason) == (  # type: ignore[attr-defined]
        "edge-zurich",
        method,
        "berlin-mitte",
        "STORE_NOT_ALLOWED",
    )
    assert token not in caplog.text
    after = REGISTRY.get_sample_value(
        "storeplane_auth_refused_total", {"method": method, "reason": "STORE_NOT_ALLOWED"}
    )
    assert after == before + 1


def test_owner_checks_give_restricted_callers_one_answer_and_others_not_found() -> None:
    restricted = Identity("edge-berlin", frozenset(), frozenset({"berlin-mitte"}))
    everywhere = Identity("checkout", frozenset(), frozenset({"*"}))
    with acting_as(restricted):
        assert allowed_stores() == {"berlin-mitte"}
        check_owner("berlin-mitte", kind="basket", resource_id="b-1")
        for owner in ("zurich-bahnhofstrasse", None):
            with pytest.raises(StoreNotAllowed):
                check_owner(owner, kind="basket", resource_id="b-2")
    with acting_as(everywhere):
        assert allowed_stores() is None
        check_owner("zurich-bahnhofstrasse", kind="basket", resource_id="b-3")
        with pytest.raises(NotFound):
            check_owner(None, kind="basket", resource_id="b-4")
