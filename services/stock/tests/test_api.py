"""StockService over real gRPC, on SQLite and PostgreSQL: items, levels, reservations, adjustments, errors."""

from __future__ import annotations

import grpc
import pytest
from stock_kit import BERLIN, TOKYO, ZURICH, RunningStock, item, level, load, reserve_request

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import test_authority


def _error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


@pytest.fixture
def shop(stock: RunningStock) -> RunningStock:
    load(
        stock.stub,
        [item("SHOE", barcode="4000000000017", eur=8999, chf=9490, reorder=3), item("SOCK"), item("CAP")],
        {(BERLIN, "SHOE"): 5, (BERLIN, "SOCK"): 2, (ZURICH, "SHOE"): 1},
    )
    return stock


def test_get_item_by_sku_or_barcode_prices_in_the_store_currency(shop: RunningStock) -> None:
    by_barcode = shop.stub.GetItem(stock_pb2.GetItemRequest(store_id=ZURICH, barcode="4000000000017"))
    assert (by_barcode.item.sku, by_barcode.price.amount_minor, by_barcode.price.currency_code) == ("SHOE", 9490, "CHF")
    assert by_barcode.level.on_hand == 1
    by_sku = shop.stub.GetItem(stock_pb2.GetItemRequest(store_id=BERLIN, sku="SOCK"))
    assert (by_sku.price.amount_minor, by_sku.tax_class, by_sku.level.available) == (1000, "standard", 2)


def test_unknown_item_is_not_found_and_missing_currency_is_failed_precondition(shop: RunningStock) -> None:
    missing = details_of(_error(shop.stub.GetItem, stock_pb2.GetItemRequest(store_id=BERLIN, sku="NOPE")))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "ITEM_NOT_FOUND")
    no_yen = details_of(_error(shop.stub.GetItem, stock_pb2.GetItemRequest(store_id=TOKYO, sku="SOCK")))
    assert (no_yen.code, no_yen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_PRICE_FOR_CURRENCY")


def test_availability_lists_known_skus_in_order_and_names_unknown_ones(shop: RunningStock) -> None:
    reply = shop.stub.GetAvailability(
        stock_pb2.GetAvailabilityRequest(store_id=BERLIN, skus=["SOCK", "GHOST", "CAP", "SOCK"])
    )
    assert [(lv.sku, lv.on_hand) for lv in reply.levels] == [("SOCK", 2), ("CAP", 0)]
    assert list(reply.unknown_skus) == ["GHOST"]


def test_reserve_is_declarative_and_a_retry_is_harmless(shop: RunningStock) -> None:
    first = shop.stub.Reserve(reserve_request("basket-1", {"SHOE": 2, "SOCK": 1}))
    assert first.reservation.state == stock_pb2.RESERVATION_STATE_ACTIVE
    assert shop.stub.Reserve(reserve_request("basket-1", {"SHOE": 2, "SOCK": 1})) == first  # same request_id
    shop.stub.Reserve(reserve_request("basket-1", {"SHOE": 2, "SOCK": 1}, request_id="again"))  # new id, same content
    assert level(shop.stub, "SHOE").reserved == 2
    shop.stub.Reserve(reserve_request("basket-1", {"SHOE": 1}))  # SOCK dropped, SHOE lowered
    assert (level(shop.stub, "SHOE").reserved, level(shop.stub, "SOCK").reserved) == (1, 0)
    emptied = shop.stub.Reserve(reserve_request("basket-1", {}))
    assert emptied.reservation.state == stock_pb2.RESERVATION_STATE_RELEASED
    assert level(shop.stub, "SHOE").reserved == 0


def test_all_or_nothing_shortfall_changes_nothing_and_lists_every_short_sku(shop: RunningStock) -> None:
    error = _error(shop.stub.Reserve, reserve_request("basket-2", {"SHOE": 9, "SOCK": 3, "CAP": 1}))
    details = details_of(error)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_STOCK")
    assert details.metadata == {
        "SHOE": "requested=9,available=5",
        "SOCK": "requested=3,available=2",
        "CAP": "requested=1,available=0",
    }
    # The same shortfalls as google.rpc.PreconditionFailure, one violation per short SKU.
    assert {(p.type, p.subject, p.description) for p in details.preconditions} == {
        ("STOCK", "SHOE", "requested 9, available 5"),
        ("STOCK", "SOCK", "requested 3, available 2"),
        ("STOCK", "CAP", "requested 1, available 0"),
    }
    assert level(shop.stub, "SHOE").reserved == 0 and level(shop.stub, "SOCK").reserved == 0


def test_without_all_or_nothing_reserve_holds_what_is_there(shop: RunningStock) -> None:
    reply = shop.stub.Reserve(reserve_request("basket-3", {"SHOE": 9, "SOCK": 1}, all_or_nothing=False))
    held = {line.sku: (line.requested_quantity, line.reserved_quantity) for line in reply.reservation.lines}
    assert held == {"SHOE": (9, 5), "SOCK": (1, 1)}


def test_release_gives_units_back_twice_is_fine_and_unknown_is_not_found(shop: RunningStock) -> None:
    shop.stub.Reserve(reserve_request("basket-4", {"SHOE": 3}))
    once = shop.stub.Release(stock_pb2.ReleaseRequest(reservation_id="basket-4", request_id="r1"))
    twice = shop.stub.Release(stock_pb2.ReleaseRequest(reservation_id="basket-4", request_id="r2"))
    assert once.reservation.state == twice.reservation.state == stock_pb2.RESERVATION_STATE_RELEASED
    assert level(shop.stub, "SHOE").available == 5
    ghost = details_of(
        _error(shop.stub.Release, stock_pb2.ReleaseRequest(reservation_id="never-made", request_id="r3"))
    )
    assert (ghost.code, ghost.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def test_reservation_keeps_its_store(shop: RunningStock) -> None:
    shop.stub.Reserve(reserve_request("basket-5", {"SHOE": 1}))
    details = details_of(_error(shop.stub.Reserve, reserve_request("basket-5", {"SHOE": 1}, store=ZURICH)))
    assert details.reason == "RESERVATION_STORE_MISMATCH"


def test_adjust_stock_by_delta_or_count_once_per_request_id(shop: RunningStock) -> None:
    receipt = stock_pb2.AdjustStockRequest(
        store_id=BERLIN, sku="CAP", delta=12, reason=stock_pb2.ADJUSTMENT_REASON_RECEIPT, request_id="delivery-7"
    )
    assert shop.stub.AdjustStock(receipt).level.on_hand == 12
    assert shop.stub.AdjustStock(receipt).level.on_hand == 12  # replayed, not applied twice
    count = stock_pb2.AdjustStockRequest(
        store_id=BERLIN, sku="CAP", set_on_hand=10, reason=stock_pb2.ADJUSTMENT_REASON_COUNT, request_id="count-1"
    )
    reply = shop.stub.AdjustStock(count)
    assert (reply.level.on_hand, reply.applied_delta) == (10, -2)
    receipt.delta = 13
    reused = details_of(_error(shop.stub.AdjustStock, receipt))
    assert (reused.code, reused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")


def test_request_ids_are_scoped_to_the_caller(shop: RunningStock) -> None:
    """The same key from two token subjects is two keys; from one subject, one (x-caller metadata is no identity)."""
    request = stock_pb2.AdjustStockRequest(
        store_id=BERLIN, sku="CAP", delta=1, reason=stock_pb2.ADJUSTMENT_REASON_RECEIPT, request_id="shared"
    )
    authority = test_authority()
    for subject in ("till-1", "till-2"):
        with shop.channel_as(authority.token(subject=subject)) as channel:
            stub = stock_pb2_grpc.StockServiceStub(channel)
            stub.AdjustStock(request, metadata=[("x-caller", "spoofed")])
            stub.AdjustStock(request, metadata=[("x-caller", "spoofed-again")])
    assert level(shop.stub, "CAP").on_hand == 2


def test_bad_input_is_invalid_argument_naming_every_field(shop: RunningStock) -> None:
    request = stock_pb2.ReserveRequest(
        reservation_id="x" * 200,
        store_id="atlantis",
        lines=[
            stock_pb2.ReservationLine(sku="", quantity=1),
            stock_pb2.ReservationLine(sku="SHOE", quantity=-1),
            stock_pb2.ReservationLine(sku="SOCK", quantity=10**9),
        ],
        request_id="bad",
    )
    details = details_of(_error(shop.stub.Reserve, request))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in details.violations} == {
        "reservation_id",
        "store_id",
        "lines[0].sku",
        "lines[1].quantity",
        "lines[2].quantity",
    }
    too_many = reserve_request("many", {f"S{i}": 1 for i in range(201)})
    assert details_of(_error(shop.stub.Reserve, too_many)).violations[0].field == "lines"
    empty_id = reserve_request("k", {"SHOE": 1})
    empty_id.request_id = ""
    assert details_of(_error(shop.stub.Reserve, empty_id)).violations[0].field == "request_id"
    adjust = stock_pb2.AdjustStockRequest(store_id=BERLIN, sku="CAP", delta=10**12, note="n" * 501, request_id="a")
    fields = {v.field for v in details_of(_error(shop.stub.AdjustStock, adjust)).violations}
    assert fields == {"delta", "reason", "note"}
