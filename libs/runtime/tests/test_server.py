"""The bootstrap over real sockets: health, reflection, and errors turned into statuses with details."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry import trace

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.errors import FieldViolation, InvalidInput, NotFound, PreconditionFailed
from storeplane_runtime.server import ServiceHost, ServiceRegistration
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import test_authority

STOCK = "pos.stock.v1.StockService"


class OutOfShoes(PreconditionFailed):
    reason = "INSUFFICIENT_STOCK"


class FaultyStock(stock_pb2_grpc.StockServiceServicer):
    """Each RPC fails in its own way."""

    def GetItem(self, request: stock_pb2.GetItemRequest, context: grpc.ServicerContext) -> stock_pb2.GetItemResponse:
        if request.sku == "bad":
            raise InvalidInput("sku is malformed", violations=[FieldViolation("sku", "must not contain spaces")])
        if request.sku == "missing":
            raise NotFound("no item with that sku", metadata={"sku": request.sku})
        if request.sku == "crash":
            raise ZeroDivisionError("secret internal detail")
        if request.sku == "abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not your store")
        if request.sku == "trace":  # the trace context the handler runs in (what its logs and events carry)
            span = trace.get_current_span().get_span_context()
            return stock_pb2.GetItemResponse(tax_class=f"{span.trace_id:032x}-{span.span_id:016x}")
        return stock_pb2.GetItemResponse()

    def Reserve(self, request: stock_pb2.ReserveRequest, context: grpc.ServicerContext) -> stock_pb2.ReserveResponse:
        raise OutOfShoes("not enough stock", metadata={"SHO-1": "available=0"})

    def WatchStock(
        self, request: stock_pb2.WatchStockRequest, context: grpc.ServicerContext
    ) -> Iterator[stock_pb2.WatchStockResponse]:
        yield stock_pb2.WatchStockResponse()
        raise NotFound("store vanished")


@pytest.fixture
def stock_channel() -> Iterator[grpc.Channel]:
    authority = test_authority()
    settings = ServiceSettings(
        service_name="stock", grpc_host="127.0.0.1", grpc_port=0, auth_jwks_file=authority.jwks_file
    )
    host = ServiceHost(
        settings,
        registrations=[ServiceRegistration(STOCK, stock_pb2_grpc.add_StockServiceServicer_to_server, FaultyStock())],
    )
    port = host.start()
    with with_bearer(grpc.insecure_channel(f"127.0.0.1:{port}"), authority.token()) as channel:
        yield channel
    host.stop(0)


def _get_item(channel: grpc.Channel, sku: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stock_pb2_grpc.StockServiceStub(channel).GetItem(stock_pb2.GetItemRequest(sku=sku), timeout=5)
    return caught.value


def test_bad_input_is_invalid_argument_with_field_violations(stock_channel: grpc.Channel) -> None:
    details = details_of(_get_item(stock_channel, "bad"))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_ARGUMENT"
    assert details.domain == "stock.storeplane"
    assert details.violations == (FieldViolation("sku", "must not contain spaces"),)


def test_unknown_id_is_not_found_with_reason_and_metadata(stock_channel: grpc.Channel) -> None:
    details = details_of(_get_item(stock_channel, "missing"))
    assert (details.code, details.reason, dict(details.metadata)) == (
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        {"sku": "missing"},
    )


def test_subclass_reason_and_code_come_from_the_table(stock_channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stock_pb2_grpc.StockServiceStub(stock_channel).Reserve(stock_pb2.ReserveRequest(), timeout=5)
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_STOCK")


def test_unexpected_exception_is_internal_without_its_message_never_unknown(stock_channel: grpc.Channel) -> None:
    error = _get_item(stock_channel, "crash")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (error.details() or "")
    assert "Traceback" not in (error.details() or "")
    assert details_of(error).reason == "INTERNAL"


def test_explicit_abort_passes_through_untouched(stock_channel: grpc.Channel) -> None:
    error = _get_item(stock_channel, "abort")
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "not your store")


def test_error_in_the_middle_of_a_server_stream_keeps_its_code(stock_channel: grpc.Channel) -> None:
    stream = stock_pb2_grpc.StockServiceStub(stock_channel).WatchStock(stock_pb2.WatchStockRequest(), timeout=5)
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        for message in stream:
            received.append(message)
    assert len(received) == 1
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_method_not_built_yet_is_unimplemented(stock_channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stock_pb2_grpc.StockServiceStub(stock_channel).AdjustStock(stock_pb2.AdjustStockRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_reports_each_service_and_reflection_lists_them(stock_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(stock_channel)
    for name in ("", STOCK):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="pos.nope.v1.Nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    services = set(ProtoReflectionDescriptorDatabase(stock_channel).get_services())
    assert {STOCK, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


def _trace_seen(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[str, str]:
    reply = stock_pb2_grpc.StockServiceStub(channel).GetItem(
        stock_pb2.GetItemRequest(sku="trace"), timeout=5, metadata=metadata
    )
    trace_id, _, span_id = reply.tax_class.partition("-")
    return trace_id, span_id


def test_a_call_runs_in_the_callers_trace_with_a_span_id_of_its_own(stock_channel: grpc.Channel) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    trace_id, span_id = _trace_seen(stock_channel, (("traceparent", f"00-{caller_trace}-{caller_span}-01"),))
    assert trace_id == caller_trace
    assert span_id not in {caller_span, "0" * 16}


def test_a_call_without_trace_context_gets_a_new_trace_each_time(stock_channel: grpc.Channel) -> None:
    first, second = _trace_seen(stock_channel)[0], _trace_seen(stock_channel)[0]
    assert first != "0" * 32 and second != "0" * 32
    assert first != second
    # A malformed traceparent is ignored, not an error.
    assert _trace_seen(stock_channel, (("traceparent", "garbage"),))[0] != "0" * 32
