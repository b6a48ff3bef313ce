"""Concurrency on PostgreSQL: many tills reserving the last units at once never oversell, and a reservation's
units come back exactly once when Release races the expiry sweep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from stock_kit import BERLIN, RunningStock, item, level, load, reserve_request

from pos.stock.v1 import stock_pb2
from storeplane_runtime.status import details_of

ROUNDS = 20
CALLERS = 50


def _race(stub, requests: list[stock_pb2.ReserveRequest]) -> tuple[int, list[grpc.RpcError]]:  # type: ignore[no-untyped-def]
    start = threading.Barrier(len(requests))

    def call(request: stock_pb2.ReserveRequest) -> grpc.RpcError | None:
        start.wait()
        try:
            stub.Reserve(request, timeout=30)
        except grpc.RpcError as exc:
            return exc
        return None

    with ThreadPoolExecutor(len(requests)) as pool:
        outcomes = list(pool.map(call, requests))
    failures = [o for o in outcomes if o is not None]
    return len(outcomes) - len(failures), failures


def _watch_never_negative(stock: RunningStock, skus: list[str]) -> tuple[Callable[[], None], list[int]]:
    """Polls availability while the race runs; records every available quantity seen. Call the first result to
    stop polling (it waits for the poller, so no call is left running when the test ends)."""
    stopping, seen = threading.Event(), []

    def poll() -> None:
        while not stopping.is_set():
            reply = stock.stub.GetAvailability(stock_pb2.GetAvailabilityRequest(store_id=BERLIN, skus=skus), timeout=10)
            seen.extend(lv.available for lv in reply.levels)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()

    def stop() -> None:
        stopping.set()
        poller.join(timeout=15)

    return stop, seen


# Reserves share transactions (group commit): by default one at a time; also several at once, locking levels the
# others need; and each alone.
BATCHING = {
    "one-lane": {},
    "four-lanes": {"reserve_batch_lanes": 4, "reserve_batch_size": 4},
    "unbatched": {"reserve_batch_lanes": 16, "reserve_batch_size": 1},
}


@pytest.mark.parametrize("batching", BATCHING.values(), ids=BATCHING.keys())
def test_fifty_tills_reserving_one_of_ten_units_sell_exactly_ten(
    postgres_url: str, make_stock: Callable[..., RunningStock], batching: dict[str, int]
) -> None:
    stock = make_stock(postgres_url, **batching)
    skus = [f"LAST-PAIR-{r}" for r in range(ROUNDS)]
    load(stock.stub, [item(s) for s in skus], {(BERLIN, s): 10 for s in skus})
    for sku in skus:
        stop, seen = _watch_never_negative(stock, [sku])
        ok, failures = _race(stock.stub, [reserve_request(f"basket-{sku}-{i}", {sku: 1}) for i in range(CALLERS)])
        stop()
        assert ok == 10, sku
        assert len(failures) == 40
        assert {f.code() for f in failures} == {grpc.StatusCode.FAILED_PRECONDITION}
        assert {details_of(f).reason for f in failures} == {"INSUFFICIENT_STOCK"}
        after = level(stock.stub, sku)
        assert (after.on_hand, after.reserved, after.available) == (10, 10, 0)
        assert min(seen, default=0) >= 0


@pytest.mark.parametrize("batching", BATCHING.values(), ids=BATCHING.keys())
def test_overlapping_multi_line_reservations_are_all_or_nothing(
    postgres_url: str, make_stock: Callable[..., RunningStock], batching: dict[str, int]
) -> None:
    stock = make_stock(postgres_url, **batching)
    skus = ["SHOE", "SOCK", "CAP", "BAG"]
    load(stock.stub, [item(s) for s in skus], {(BERLIN, s): 10 for s in skus})
    # Each basket wants two neighbouring SKUs (and a third, in reverse order, to tempt lock-order deadlocks).
    pairs = [(skus[i % 4], skus[(i + 1) % 4]) for i in range(CALLERS)]
    requests = [
        reserve_request(f"multi-{i}", {b: 1, a: 1, **({skus[(i + 2) % 4]: 1} if i % 3 == 0 else {})})
        for i, (a, b) in enumerate(pairs)
    ]
    for round_number in range(ROUNDS):
        for r in requests:
            r.reservation_id = f"multi-{round_number}-{r.reservation_id.rsplit('-', 1)[-1]}"
            r.request_id = f"rid-{r.reservation_id}"
        ok, failures = _race(stock.stub, requests)
        assert {f.code() for f in failures} <= {grpc.StatusCode.FAILED_PRECONDITION}
        reply = stock.stub.GetAvailability(stock_pb2.GetAvailabilityRequest(store_id=BERLIN, skus=skus), timeout=10)
        reserved = {lv.sku: lv.reserved for lv in reply.levels}
        # All or nothing: reserved units per SKU equal exactly what the successful baskets asked for.
        assert all(lv.available >= 0 and lv.reserved <= 10 for lv in reply.levels)
        assert sum(reserved.values()) == sum(len(r.lines) for r in requests if _held(stock, r.reservation_id))
        assert ok == sum(1 for r in requests if _held(stock, r.reservation_id))
        for r in (r for r in requests if _held(stock, r.reservation_id)):  # give everything back for the next round
            stock.stub.Release(
                stock_pb2.ReleaseRequest(reservation_id=r.reservation_id, request_id=f"rel-{r.reservation_id}")
            )
        assert all(
            lv.reserved == 0
            for lv in stock.stub.GetAvailability(
                stock_pb2.GetAvailabilityRequest(store_id=BERLIN, skus=skus), timeout=10
            ).levels
        )


def _held(stock: RunningStock, reservation_id: str) -> bool:
    from stock import storage

    with stock.servicer.database.engine.connect() as conn:
        found = storage.find_reservation(conn, reservation_id)
    return found is not None and found.state.value == "ACTIVE"


def test_release_racing_expiry_gives_units_back_exactly_once(
    postgres_url: str, make_stock: Callable[..., RunningStock]
) -> None:
    stock = make_stock(postgres_url, expiry_sweep_seconds=0.01, expiry_batch_size=5)
    load(stock.stub, [item("RACE")], {(BERLIN, "RACE"): 1000})
    count = 60
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: stock.stub.Reserve(reserve_request(f"race-{i}", {"RACE": 2}, ttl_seconds=2)), range(count)
            )
        )
    time.sleep(max(0.0, 2.0 - 0.05))  # the sweeper starts expiring while the releases arrive

    def release(i: int) -> int:
        reply = stock.stub.Release(stock_pb2.ReleaseRequest(reservation_id=f"race-{i}", request_id=f"rel-{i}"))
        return reply.reservation.state

    with ThreadPoolExecutor(16) as pool:
        states = list(pool.map(release, range(count)))
    deadline = time.monotonic() + 10
    while level(stock.stub, "RACE").reserved and time.monotonic() < deadline:
        time.sleep(0.05)
    after = level(stock.stub, "RACE")
    assert (after.on_hand, after.reserved, after.available) == (1000, 0, 1000)
    assert set(states) <= {stock_pb2.RESERVATION_STATE_RELEASED, stock_pb2.RESERVATION_STATE_EXPIRED}
    # Every reservation gave its 2 units back in exactly one change (a release or an expiry), never twice.
    given_back: dict[str, int] = {}
    for change in _level_changes(stock):
        if change.reserved_delta < 0:
            given_back[change.reference_id] = given_back.get(change.reference_id, 0) - change.reserved_delta
    assert given_back == {f"race-{i}": 2 for i in range(count)}


def _level_changes(stock: RunningStock) -> list[stock_pb2.StockLevelChange]:
    from sqlalchemy import select

    from pos.stock.v1 import events_pb2
    from storeplane_runtime.tables import outbox_table

    with stock.servicer.database.engine.connect() as conn:
        rows = conn.execute(
            select(outbox_table.c.payload).where(outbox_table.c.event_type == "pos.stock.v1.StockLevelChanged")
        )
        return [events_pb2.StockLevelChanged.FromString(r.payload).change for r in rows]
