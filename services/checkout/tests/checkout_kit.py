"""Helpers of the checkout tests: the real checkout service and the real stock service (gRPC over sockets), items and
stock loaded through stock's API, basket and tender builders."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from checkout.main import create_app
from checkout.settings import CheckoutSettings
from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from stock.main import create_app as create_stock_app
from stock.settings import StockSettings
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import RunningService, free_port, service_settings, start_service

BERLIN, ZURICH, NEW_YORK, TOKYO = "berlin-mitte", "zurich-bahnhofstrasse", "new-york-5th-ave", "tokyo-shibuya"


def rid() -> str:
    return str(uuid.uuid4())


def eur(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code="EUR")


def money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code=currency)


def cash(amount: int, currency: str = "EUR") -> checkout_pb2.Tender:
    return checkout_pb2.Tender(type=checkout_pb2.TENDER_TYPE_CASH, amount=money(amount, currency))


def card(amount: int, currency: str = "EUR") -> checkout_pb2.Tender:
    return checkout_pb2.Tender(type=checkout_pb2.TENDER_TYPE_CARD, amount=money(amount, currency), reference="AUTH1")


def start_stock(url: str, **overrides: Any) -> RunningService:
    return start_service(create_stock_app, service_settings(StockSettings, "stock", url, **overrides))


def start_checkout(
    url: str, *, stock_port: int, customer_port: int = 0, loyalty_port: int = 0, **overrides: Any
) -> RunningService:
    settings = service_settings(
        CheckoutSettings,
        "checkout",
        url,
        grpc_workers=32,
        stock_addr=f"127.0.0.1:{stock_port}",
        customer_addr=f"127.0.0.1:{customer_port or free_port()}",
        loyalty_addr=f"127.0.0.1:{loyalty_port or free_port()}",
        **overrides,
    )
    return start_service(create_app, settings)


def stock_item(
    sku: str,
    *,
    barcode: str = "",
    eur: int | None = 1000,
    chf: int | None = None,
    usd: int | None = None,
    jpy: int | None = None,
    tax_class: str = "standard",
) -> stock_pb2.Item:
    prices = [
        money(amount, code)
        for code, amount in (("EUR", eur), ("CHF", chf), ("USD", usd), ("JPY", jpy))
        if amount is not None
    ]
    item = stock_pb2.Item(sku=sku, name=f"Item {sku}", tax_class=tax_class, prices=prices)
    if barcode:
        item.barcodes.append(barcode)
    return item


def load_stock(stock: RunningService, items: list[stock_pb2.Item], levels: dict[tuple[str, str], int]) -> None:
    stub = stock.stub_of(stock_pb2_grpc.StockServiceStub)
    key = rid()
    summary = stub.ImportItems(iter([stock_pb2.ImportItemsRequest(request_id=key, item=i) for i in items]), timeout=30)
    assert summary.summary.rejected == 0, summary
    if levels:
        key = rid()
        rows = [
            stock_pb2.ImportStockLevelsRequest(
                request_id=key, row=stock_pb2.StockLevelRow(store_id=s, sku=k, on_hand=n)
            )
            for (s, k), n in levels.items()
        ]
        summary = stub.ImportStockLevels(iter(rows), timeout=30)
        assert summary.summary.rejected == 0, summary


def load_demo_stock(stock: RunningService) -> None:
    load_stock(
        stock,
        [
            stock_item("SKU-1", barcode="4000000000011", eur=1000, chf=1995, usd=1000, jpy=500),
            stock_item("SKU-2", eur=250, chf=333, usd=299, jpy=120, tax_class="reduced"),
            stock_item("SKU-3", eur=1999, chf=1999, usd=1999, jpy=1000),
            stock_item("RARE", eur=500, chf=500, usd=500, jpy=500),
        ],
        {(BERLIN, "SKU-1"): 100, (BERLIN, "SKU-2"): 100, (BERLIN, "SKU-3"): 100, (BERLIN, "RARE"): 1},
    )


def reserved(stock: RunningService, sku: str, store: str = BERLIN) -> int:
    stub = stock.stub_of(stock_pb2_grpc.StockServiceStub)
    reply = stub.GetAvailability(stock_pb2.GetAvailabilityRequest(store_id=store, skus=[sku]), timeout=10)
    return int(reply.levels[0].reserved)


@dataclass
class Till:
    """A till's view of checkout: the stub and the calls a cashier makes."""

    stub: checkout_pb2_grpc.CheckoutServiceStub
    store: str = BERLIN
    terminal: str = "till-1"

    def open(self) -> checkout_pb2.Basket:
        return self.stub.OpenBasket(
            checkout_pb2.OpenBasketRequest(
                store_id=self.store, terminal_id=self.terminal, cashier_id="c1", request_id=rid()
            ),
            timeout=10,
        ).basket

    def scan(
        self, basket_id: str, sku: str = "", *, barcode: str = "", quantity: int = 0
    ) -> checkout_pb2.ScanItemResponse:
        request = checkout_pb2.ScanItemRequest(basket_id=basket_id, quantity=quantity, request_id=rid())
        if barcode:
            request.barcode = barcode
        else:
            request.sku = sku
        return self.stub.ScanItem(request, timeout=10)

    def complete(self, basket_id: str, *tenders: checkout_pb2.Tender, request_id: str = "") -> checkout_pb2.Sale:
        return self.stub.CompleteSale(
            checkout_pb2.CompleteSaleRequest(basket_id=basket_id, tenders=tenders, request_id=request_id or rid()),
            timeout=10,
        ).sale


def error_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """The code and ErrorInfo reason of a call expected to fail."""
    try:
        call()
    except grpc.RpcError as exc:
        details = details_of(exc)
        return details.code, details.reason
    raise AssertionError("the call did not fail")
