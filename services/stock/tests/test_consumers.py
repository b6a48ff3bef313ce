"""Events stock consumes, applied through the runtime's inbox applier exactly as the bus delivers them."""

from __future__ import annotations

from sqlalchemy import select
from stock_kit import BERLIN, RunningStock, item, level, load, reserve_request

from pos.checkout.v1 import events_pb2 as checkout
from stock import storage
from storeplane_runtime.testing import deliver


def _deliver(stock: RunningStock, event, event_id: str = "") -> str:  # type: ignore[no-untyped-def]
    return deliver(stock.app, event, event_id=event_id, source="checkout")


def _sale(sale_id: str, lines: dict[str, int], reservation_id: str = "") -> checkout.SaleCompleted:
    return checkout.SaleCompleted(
        sale_id=sale_id,
        store_id=BERLIN,
        reservation_id=reservation_id,
        basket_id=reservation_id,
        lines=[
            checkout.SaleCompleted.Line(line_id=str(i), sku=s, quantity=q) for i, (s, q) in enumerate(lines.items())
        ],
    )


def test_sale_commits_its_reservation_and_the_same_event_twice_changes_stock_once(stock: RunningStock) -> None:
    load(stock.stub, [item("SHOE"), item("SOCK")], {(BERLIN, "SHOE"): 5, (BERLIN, "SOCK"): 5})
    stock.stub.Reserve(reserve_request("basket-9", {"SHOE": 2, "SOCK": 1}))
    event = _sale("sale-9", {"SHOE": 2}, reservation_id="basket-9")
    assert _deliver(stock, event, "evt-1") == "applied"
    assert _deliver(stock, event, "evt-1") == "duplicate"
    assert _deliver(stock, event, "evt-2") == "applied"  # replayed under a new id: the sale id stops it
    shoe, sock = level(stock.stub, "SHOE"), level(stock.stub, "SOCK")
    assert (shoe.on_hand, shoe.reserved) == (3, 0)
    assert (sock.on_hand, sock.reserved) == (5, 0)  # held but not sold: released


def test_offline_sale_without_reservation_may_go_negative_and_is_recorded(stock: RunningStock) -> None:
    load(stock.stub, [item("SHOE")], {(BERLIN, "SHOE"): 1})
    assert _deliver(stock, _sale("offline-1", {"SHOE": 3, "GHOST-SKU": 2})) == "applied"
    assert level(stock.stub, "SHOE").on_hand == -2
    with stock.servicer.database.engine.connect() as conn:
        rows = conn.execute(select(storage.stock_discrepancies)).all()
        ghost = storage.read_levels(conn, BERLIN, ["GHOST-SKU"])["GHOST-SKU"]
    assert {(r.sku, r.kind, r.quantity) for r in rows} == {
        ("SHOE", "NEGATIVE_ON_HAND", 3),
        ("GHOST-SKU", "UNKNOWN_SKU", 2),
        ("GHOST-SKU", "NEGATIVE_ON_HAND", 2),
    }
    assert ghost.on_hand == -2


def test_return_restocks_only_lines_marked_for_restock(stock: RunningStock) -> None:
    load(stock.stub, [item("SHOE"), item("SOCK")], {(BERLIN, "SHOE"): 1, (BERLIN, "SOCK"): 1})
    event = checkout.SaleReturned(
        return_id="ret-1",
        store_id=BERLIN,
        lines=[
            checkout.SaleReturned.Line(line_id="1", sku="SHOE", quantity=2, restock=True),
            checkout.SaleReturned.Line(line_id="2", sku="SOCK", quantity=1, restock=False),
        ],
    )
    assert _deliver(stock, event) == "applied"
    assert _deliver(stock, event) == "applied"  # new event id, same return: no second restock
    assert (level(stock.stub, "SHOE").on_hand, level(stock.stub, "SOCK").on_hand) == (3, 1)


def test_voided_basket_releases_its_reservation(stock: RunningStock) -> None:
    load(stock.stub, [item("SHOE")], {(BERLIN, "SHOE"): 4})
    stock.stub.Reserve(reserve_request("basket-v", {"SHOE": 3}))
    assert _deliver(stock, checkout.BasketVoided(basket_id="basket-v", store_id=BERLIN, reservation_id="basket-v"))
    assert level(stock.stub, "SHOE").available == 4
