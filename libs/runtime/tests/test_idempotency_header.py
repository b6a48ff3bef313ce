"""The `idempotency-key` metadata (the HTTP Idempotency-Key header, passed on by Envoy's transcoder) stands for an
empty request_id, over a real gRPC server on a real socket with the kit's whole server chain (auth included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime import migrations
from storeplane_runtime.db import Database
from storeplane_runtime.idempotency import IdempotentCalls
from storeplane_runtime.server import ServiceHost, ServiceRegistration
from storeplane_runtime.settings import ServiceSettings
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import test_authority, with_bearer

STOCK = "pos.stock.v1.StockService"
MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "stock" / "migrations"


class CountingStock(stock_pb2_grpc.StockServiceServicer):
    """Release done once per key by the kit (each first call answers with its own number); ImportItems and GetItem
    note the request they got."""

    def __init__(self, database: Database) -> None:
        self.calls = IdempotentCalls(database, stock_pb2.DESCRIPTOR.services_by_name["StockService"], source="stock")
        self.released: list[str] = []
        self.imported_ids: list[list[str]] = []

    def Release(self, request: stock_pb2.ReleaseRequest, context: grpc.ServicerContext) -> stock_pb2.ReleaseResponse:
        def work(_uow: object) -> stock_pb2.ReleaseResponse:
            self.released.append(request.request_id)
            reservation = stock_pb2.Reservation(
                reservation_id=request.reservation_id, store_id=f"#{len(self.released)}"
            )
            return stock_pb2.ReleaseResponse(reservation=reservation)

        return self.calls.once(context, request, stock_pb2.ReleaseResponse, work)

    def ImportItems(
        self, request_iterator: Iterator[stock_pb2.ImportItemsRequest], context: grpc.ServicerContext
    ) -> stock_pb2.ImportItemsResponse:
        ids = [message.request_id for message in request_iterator]
        self.imported_ids.append(ids)
        return stock_pb2.ImportItemsResponse(summary=stock_pb2.ImportSummary(received=len(ids)))


Stock = tuple[stock_pb2_grpc.StockServiceStub, CountingStock]


@pytest.fixture
def stock(database_url: str) -> Iterator[Stock]:
    database = Database(database_url)
    migrations.upgrade(database.engine, MIGRATIONS)
    authority = test_authority()
    settings = ServiceSettings(
        service_name="stock", grpc_host="127.0.0.1", grpc_port=0, auth_jwks_file=authority.jwks_file
    )
    servicer = CountingStock(database)
    host = ServiceHost(
        settings,
        registrations=[ServiceRegistration(STOCK, stock_pb2_grpc.add_StockServiceServicer_to_server, servicer)],
    )
    port = host.start()
    with with_bearer(grpc.insecure_channel(f"127.0.0.1:{port}"), authority.token()) as channel:
        yield stock_pb2_grpc.StockServiceStub(channel), servicer
    host.stop(0)
    database.dispose()


def _key(value: str) -> tuple[tuple[str, str]]:
    return (("idempotency-key", value),)


def test_a_key_in_the_header_only_is_honoured_and_a_repeat_gets_the_first_answer(stock: Stock) -> None:
    stub, servicer = stock
    request = stock_pb2.ReleaseRequest(reservation_id="basket-1")  # no request_id in the message
    first = stub.Release(request, metadata=_key("k-header-1"), timeout=10)
    again = stub.Release(request, metadata=_key("k-header-1"), timeout=10)
    assert again == first
    assert first.reservation.store_id == "#1"
    assert servicer.released == ["k-header-1"]  # done once, with the header's key as its request_id
    # The header's key and the same key in the field are one key.
    same_in_field = stock_pb2.ReleaseRequest(reservation_id="basket-1", request_id="k-header-1")
    assert stub.Release(same_in_field, timeout=10) == first
    assert stub.Release(same_in_field, metadata=_key("k-header-1"), timeout=10) == first
    # Another header key is another call.
    assert stub.Release(request, metadata=_key("k-header-2"), timeout=10).reservation.store_id == "#2"
    assert servicer.released == ["k-header-1", "k-header-2"]


def test_a_header_that_differs_from_the_field_is_invalid_argument_on_request_id(stock: Stock) -> None:
    stub, servicer = stock
    request = stock_pb2.ReleaseRequest(reservation_id="basket-1", request_id="k-field")
    with pytest.raises(grpc.RpcError) as raised:
        stub.Release(request, metadata=_key("k-header"), timeout=10)
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.violations] == ["request_id"]
    assert servicer.released == []


def test_neither_header_nor_field_is_still_invalid_argument(stock: Stock) -> None:
    stub, _ = stock
    with pytest.raises(grpc.RpcError) as raised:
        stub.Release(stock_pb2.ReleaseRequest(reservation_id="basket-1"), timeout=10)
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.violations] == ["request_id"]


def test_a_client_stream_takes_the_header_as_its_first_message_key(stock: Stock) -> None:
    stub, servicer = stock
    messages = [stock_pb2.ImportItemsRequest(item=stock_pb2.Item(sku=f"sku-{i}")) for i in range(3)]
    answer = stub.ImportItems(iter(messages), metadata=_key("k-import"), timeout=10)
    assert answer.summary.received == 3
    assert servicer.imported_ids == [["k-import", "", ""]]  # later messages may leave it empty, as the contract says

    conflicting = [stock_pb2.ImportItemsRequest(request_id="k-other"), *messages]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ImportItems(iter(conflicting), metadata=_key("k-import"), timeout=10)
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.violations] == ["request_id"]
    assert len(servicer.imported_ids) == 1  # refused before the servicer read a row
