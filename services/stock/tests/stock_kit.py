"""Helpers of the stock tests: start the real service (gRPC over a socket), build items, load stock."""

from __future__ import annotations

from typing import Any

from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from stock.api import StockServicer
from stock.main import create_app
from stock.settings import StockSettings
from storeplane_runtime.testing import RunningService, service_settings, start_service

BERLIN, ZURICH, TOKYO = "berlin-mitte", "zurich-bahnhofstrasse", "tokyo-shibuya"


class RunningStock(RunningService):
    """The stock service on a free port (the kit's `RunningService`) with its stub and servicer at hand."""

    @property
    def stub(self) -> stock_pb2_grpc.StockServiceStub:
        return self.stub_of(stock_pb2_grpc.StockServiceStub)

    @property
    def servicer(self) -> StockServicer:
        return self.app.servicer(StockServicer)


def start_stock(url: str, **overrides: Any) -> RunningStock:
    settings = service_settings(StockSettings, "stock", url, **{"grpc_workers": 64, **overrides})
    running = start_service(create_app, settings)
    return RunningStock(running.app, running.port, running.channel)


def item(sku: str, *, barcode: str = "", eur: int | None = 1000, chf: int | None = None, reorder: int | None = None):
    prices = []
    if eur is not None:
        prices.append(common_pb2.Money(amount_minor=eur, currency_code="EUR"))
    if chf is not None:
        prices.append(common_pb2.Money(amount_minor=chf, currency_code="CHF"))
    message = stock_pb2.Item(sku=sku, name=f"Item {sku}", tax_class="standard", prices=prices)
    if barcode:
        message.barcodes.append(barcode)
    if reorder is not None:
        message.reorder_point = reorder
    return message


def load(
    stub: stock_pb2_grpc.StockServiceStub, items: list[stock_pb2.Item], levels: dict[tuple[str, str], int]
) -> None:
    """Import items and on-hand levels through the API."""
    key = str(id(items)) + str(len(levels))
    stub.ImportItems(iter([stock_pb2.ImportItemsRequest(request_id=f"items-{key}", item=i) for i in items]), timeout=30)
    stub.ImportStockLevels(
        iter(
            [
                stock_pb2.ImportStockLevelsRequest(
                    request_id=f"levels-{key}", row=stock_pb2.StockLevelRow(store_id=s, sku=k, on_hand=n)
                )
                for (s, k), n in levels.items()
            ]
        ),
        timeout=30,
    )


def reserve_request(
    reservation_id: str,
    lines: dict[str, int],
    *,
    store: str = BERLIN,
    all_or_nothing: bool = True,
    request_id: str = "",
    ttl_seconds: int = 0,
) -> stock_pb2.ReserveRequest:
    request = stock_pb2.ReserveRequest(
        reservation_id=reservation_id,
        store_id=store,
        lines=[stock_pb2.ReservationLine(sku=s, quantity=q) for s, q in lines.items()],
        all_or_nothing=all_or_nothing,
        request_id=request_id or f"{reservation_id}-{store}-{sorted(lines.items())}-{ttl_seconds}",
    )
    if ttl_seconds:
        request.ttl.seconds = ttl_seconds
    return request


def level(stub: stock_pb2_grpc.StockServiceStub, sku: str, store: str = BERLIN) -> stock_pb2.StockLevel:
    reply = stub.GetAvailability(stock_pb2.GetAvailabilityRequest(store_id=store, skus=[sku]), timeout=10)
    return reply.levels[0]
