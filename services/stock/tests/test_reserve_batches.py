"""Reserves done together in one transaction (group commit) behave as if each ran alone, in order."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from stock_kit import BERLIN, ZURICH, RunningStock, item, level, load

from pos.stock.v1 import events_pb2
from stock import storage, use_cases
from stock.domain import InsufficientStock, ItemNotFound, ReservationState, ReservationStoreMismatch, StockPolicy
from stock.storage.tables import reservations
from stock.use_cases import ReserveCommand
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.tables import outbox_table


@pytest.fixture
def shop(database_url: str, make_stock: Callable[..., RunningStock]) -> RunningStock:
    stock = make_stock(database_url)
    load(
        stock.stub,
        [item("SHOE"), item("SOCK"), item("CAP", chf=900)],
        {(BERLIN, "SHOE"): 3, (BERLIN, "SOCK"): 10, (ZURICH, "CAP"): 5},
    )
    return stock


def _reserve_many(stock: RunningStock, commands: list[ReserveCommand]) -> list[object]:
    with UnitOfWork(stock.servicer.database, source="stock") as uow:
        outcomes = use_cases.reserve_many(uow, StockPolicy(), commands, now=datetime.now(UTC))
        uow.commit()
    return list(outcomes)


def _changes(stock: RunningStock, reservation_id: str) -> list[tuple[str, int, int]]:
    """(SKU, reserved before, reserved after) of the StockLevelChanged events a reservation caused."""
    with stock.servicer.database.engine.connect() as conn:
        payloads = conn.execute(
            select(outbox_table.c.payload)
            .where(outbox_table.c.event_type == "pos.stock.v1.StockLevelChanged")
            .order_by(outbox_table.c.id)
        ).scalars()
        events = [events_pb2.StockLevelChanged.FromString(p) for p in payloads]
    changes = [e.change for e in events if e.change.reference_id == reservation_id]
    return [(c.sku, c.reserved - c.reserved_delta, c.reserved) for c in changes]


def _reservation_ids(stock: RunningStock) -> list[str]:
    with stock.servicer.database.engine.connect() as conn:
        return sorted(conn.execute(select(reservations.c.reservation_id)).scalars())


def test_later_reserves_of_a_batch_see_what_the_earlier_ones_hold(shop: RunningStock) -> None:
    outcomes = _reserve_many(
        shop,
        [
            ReserveCommand("basket-a", BERLIN, {"SHOE": 2, "SOCK": 1}),
            ReserveCommand("basket-b", BERLIN, {"SHOE": 2}),  # one pair left after basket-a
            ReserveCommand("basket-c", BERLIN, {"SHOE": 1, "SOCK": 4}),
            ReserveCommand("basket-d", BERLIN, {"SHOE": 1}, all_or_nothing=False),
        ],
    )
    a, b, c, d = outcomes
    assert a.state is ReservationState.ACTIVE  # type: ignore[attr-defined]
    assert isinstance(b, InsufficientStock)
    assert [(s.sku, s.requested, s.available) for s in b.shortfalls] == [("SHOE", 2, 1)]
    assert c.state is ReservationState.ACTIVE  # type: ignore[attr-defined]
    assert [(line.sku, line.reserved) for line in d.lines] == [("SHOE", 0)]  # type: ignore[attr-defined]
    shoe, sock = level(shop.stub, "SHOE"), level(shop.stub, "SOCK")
    assert (shoe.on_hand, shoe.reserved, shoe.available) == (3, 3, 0)
    assert (sock.reserved, sock.available) == (5, 5)
    # Each change starts where the one before it in the batch left the level.
    assert _changes(shop, "basket-a") == [("SHOE", 0, 2), ("SOCK", 0, 1)]
    assert _changes(shop, "basket-b") == []
    assert _changes(shop, "basket-c") == [("SHOE", 2, 3), ("SOCK", 1, 5)]
    assert _changes(shop, "basket-d") == []


def test_a_failed_reserve_of_a_batch_leaves_no_trace_and_an_existing_reservation_as_it_was(
    shop: RunningStock,
) -> None:
    _reserve_many(shop, [ReserveCommand("basket-kept", BERLIN, {"SOCK": 2})])
    outcomes = _reserve_many(
        shop,
        [
            ReserveCommand("basket-new", BERLIN, {"SHOE": 9}),  # short: a new reservation that never was
            ReserveCommand("basket-kept", BERLIN, {"SOCK": 2, "HAT": 1}),  # unknown SKU: stays as it was
            ReserveCommand("basket-zurich", ZURICH, {"CAP": 2}),
            ReserveCommand("basket-kept-elsewhere", BERLIN, {"SOCK": 1}),
        ],
    )
    assert isinstance(outcomes[0], InsufficientStock)
    assert isinstance(outcomes[1], ItemNotFound)
    assert outcomes[2].state is ReservationState.ACTIVE  # type: ignore[attr-defined]
    assert _reservation_ids(shop) == ["basket-kept", "basket-kept-elsewhere", "basket-zurich"]
    with shop.servicer.database.engine.connect() as conn:
        kept = storage.find_reservation(conn, "basket-kept")
    assert kept is not None and [(x.sku, x.reserved) for x in kept.lines] == [("SOCK", 2)]
    assert level(shop.stub, "SOCK").reserved == 3
    assert level(shop.stub, "CAP", ZURICH).reserved == 2
    # One reservation keeps its store whatever else its batch holds.
    (moved,) = _reserve_many(shop, [ReserveCommand("basket-zurich", BERLIN, {"SOCK": 1})])
    assert isinstance(moved, ReservationStoreMismatch)
    assert _reservation_ids(shop) == ["basket-kept", "basket-kept-elsewhere", "basket-zurich"]


def test_a_consumer_batch_locks_its_reservations_and_levels_up_front(
    postgres_url: str, make_stock: Callable[..., RunningStock]
) -> None:
    """Before a batch of events is applied, the reservations it names and every level it touches (those the sales
    name and those the reservations hold) are this transaction's: a Reserve then cannot hold one of them while
    waiting for another (the order of a batch of sales no longer matters)."""
    stock = make_stock(postgres_url)
    load(stock.stub, [item("SHOE"), item("SOCK"), item("CAP")], {(BERLIN, "SHOE"): 3, (BERLIN, "SOCK"): 10})
    _reserve_many(stock, [ReserveCommand("basket-a", BERLIN, {"SOCK": 1})])
    database = stock.servicer.database
    with UnitOfWork(database, source="stock") as uow:
        use_cases.lock_for_events(uow, reservation_ids={"basket-a", "basket-gone"}, level_keys={(BERLIN, "SHOE")})
        with database.engine.connect() as other, other.begin():
            other.execute(text("SET LOCAL lock_timeout = '100ms'"))
            for statement in (
                "SELECT 1 FROM reservations WHERE reservation_id = 'basket-a' FOR UPDATE",
                "SELECT 1 FROM stock_levels WHERE sku = 'SHOE' FOR UPDATE",  # a sale names it
                "SELECT 1 FROM stock_levels WHERE sku = 'SOCK' FOR UPDATE",  # the reservation holds it
            ):
                with pytest.raises(OperationalError, match="lock timeout"), other.begin_nested():
                    other.execute(text(statement))
        assert _reservation_ids(stock) == ["basket-a"]  # locking created no row for an unknown reservation
