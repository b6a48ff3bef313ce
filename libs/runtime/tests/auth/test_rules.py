"""The authorisation each RPC declares, read from its descriptor, and the stores a request names at its paths."""

from __future__ import annotations

import pytest

from pos.checkout.v1 import checkout_pb2
from pos.customer.v1 import customer_pb2
from pos.loyalty.v1 import loyalty_pb2
from pos.stock.v1 import stock_pb2
from storeplane_runtime.auth.rules import check_path, method_rules, stores_named

SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (checkout_pb2, "CheckoutService"),
        (stock_pb2, "StockService"),
        (customer_pb2, "CustomerService"),
        (loyalty_pb2, "LoyaltyService"),
    )
]


def test_every_rpc_of_every_service_declares_its_scopes() -> None:
    rules = method_rules(SERVICES)
    for service in SERVICES:
        for method in service.methods:
            rule = rules.get(f"/{service.full_name}/{method.name}")
            assert rule is not None, f"{service.full_name}/{method.name} declares no pos.common.v1.auth"
            assert rule.scopes


def test_a_stream_message_names_the_stores_of_its_row_and_every_row_of_its_batch() -> None:
    rule = method_rules(SERVICES)["/pos.stock.v1.StockService/ImportStockLevels"]
    message = stock_pb2.ImportStockLevelsRequest(
        row=stock_pb2.StockLevelRow(store_id="berlin-mitte", sku="A"),
        rows=[
            stock_pb2.StockLevelRow(store_id="zurich-bahnhofstrasse", sku="B"),
            stock_pb2.StockLevelRow(store_id="tokyo-shibuya", sku="C"),
        ],
    )
    named = [store for path in rule.store_paths for store in stores_named(message, path)]
    assert named == ["berlin-mitte", "zurich-bahnhofstrasse", "tokyo-shibuya"]
    assert rule.client_streaming


def test_an_unset_message_field_and_an_empty_id_name_no_store() -> None:
    rule = method_rules(SERVICES)["/pos.stock.v1.StockService/ImportStockLevels"]
    message = stock_pb2.ImportStockLevelsRequest(rows=[stock_pb2.StockLevelRow(store_id="", sku="B")])
    assert [store for path in rule.store_paths for store in stores_named(message, path)] == []


def test_a_path_that_names_no_field_stops_the_start() -> None:
    assert method_rules(SERVICES)["/pos.stock.v1.StockService/GetItem"].store_paths == (("store_id",),)
    with pytest.raises(ValueError, match="names no field"):
        check_path(stock_pb2.GetItemRequest.DESCRIPTOR, ("shop_id",), "/pos.stock.v1.StockService/GetItem")
    with pytest.raises(ValueError, match="does not end at a string"):
        check_path(stock_pb2.ReserveRequest.DESCRIPTOR, ("lines", "quantity"), "/pos.stock.v1.StockService/Reserve")
