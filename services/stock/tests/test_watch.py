"""WatchStock: a live stream of a store's level changes, fed from commits, ending cleanly."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from sqlalchemy import text
from stock_kit import BERLIN, ZURICH, RunningStock, item, load, reserve_request

from pos.stock.v1 import stock_pb2
from storeplane_runtime.testing import test_authority


def _reader(call) -> queue.Queue:  # type: ignore[no-untyped-def]
    got: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for message in call:
                got.put(message.change)
        except grpc.RpcError as exc:
            got.put(exc)
        got.put(None)

    threading.Thread(target=read, daemon=True).start()
    return got


def test_watch_sees_a_change_made_by_another_client(stock: RunningStock) -> None:
    load(stock.stub, [item("SHOE"), item("SOCK")], {(BERLIN, "SHOE"): 5, (BERLIN, "SOCK"): 5, (ZURICH, "SHOE"): 5})
    call = stock.stub.WatchStock(stock_pb2.WatchStockRequest(store_id=BERLIN, skus=["SHOE"]))
    call.initial_metadata()  # the subscription is live once headers arrive
    got = _reader(call)
    with stock.channel_as(test_authority().token(subject="another-till")) as other:
        from pos.stock.v1 import stock_pb2_grpc

        other_stub = stock_pb2_grpc.StockServiceStub(other)
        other_stub.Reserve(reserve_request("zurich-basket", {"SHOE": 1}, store=ZURICH))  # other store: not seen
        other_stub.Reserve(reserve_request("sock-basket", {"SOCK": 1}))  # other SKU: not seen
        other_stub.Reserve(reserve_request("watched", {"SHOE": 2}))
    change = got.get(timeout=5)
    assert (change.sku, change.store_id, change.reserved, change.available) == ("SHOE", BERLIN, 2, 3)
    assert change.reason == stock_pb2.STOCK_CHANGE_REASON_RESERVATION and change.reference_id == "watched"
    call.cancel()
    deadline = time.monotonic() + 5
    while stock.servicer.watch.subscriber_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stock.servicer.watch.subscriber_count() == 0


def test_watch_ends_cleanly_when_the_server_stops(stock: RunningStock) -> None:
    call = stock.stub.WatchStock(stock_pb2.WatchStockRequest(store_id=BERLIN))
    call.initial_metadata()
    got = _reader(call)
    started = time.monotonic()
    stock.app.host.stop(5)
    assert got.get(timeout=5) is None  # the stream ended with OK, not cut off after the grace period
    assert time.monotonic() - started < 3
    assert call.code() == grpc.StatusCode.OK


# --- several replicas on one PostgreSQL database --------------------------------------------------------------


@pytest.fixture
def replicas(make_postgres_url: Callable[[], str], make_stock: Callable[..., RunningStock]) -> tuple[RunningStock, ...]:
    url = make_postgres_url()
    return make_stock(url), make_stock(url)


def test_a_watcher_on_one_replica_sees_a_change_committed_by_another(replicas: tuple[RunningStock, ...]) -> None:
    writer, watched = replicas
    load(writer.stub, [item("SHOE")], {(BERLIN, "SHOE"): 5})
    call = watched.stub.WatchStock(stock_pb2.WatchStockRequest(store_id=BERLIN))
    call.initial_metadata()
    got = _reader(call)
    writer.stub.Reserve(reserve_request("basket-on-a", {"SHOE": 2}))
    change = got.get(timeout=5)
    assert (change.sku, change.reserved, change.available, change.reference_id) == ("SHOE", 2, 3, "basket-on-a")
    watched.stub.Reserve(reserve_request("basket-on-b", {"SHOE": 1}))  # its own commits: seen once, not twice
    assert got.get(timeout=5).reference_id == "basket-on-b"
    time.sleep(0.3)
    assert got.empty()
    call.cancel()


def test_watchers_are_cut_off_when_the_replica_may_have_missed_changes(replicas: tuple[RunningStock, ...]) -> None:
    writer, watched = replicas
    call = watched.stub.WatchStock(stock_pb2.WatchStockRequest(store_id=BERLIN))
    call.initial_metadata()
    got = _reader(call)
    assert writer.app.database is not None
    with writer.app.database.engine.connect() as conn:  # the listening connection of both replicas drops
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
            )
        )
        conn.commit()
    ended = got.get(timeout=5)
    assert isinstance(ended, grpc.RpcError)
    assert ended.code() is grpc.StatusCode.UNAVAILABLE
    assert "re-read levels" in (ended.details() or "")
    # Watching works again: the feed listens anew for the new watcher.
    again = watched.stub.WatchStock(stock_pb2.WatchStockRequest(store_id=BERLIN))
    again.initial_metadata()
    got_again = _reader(again)
    load(writer.stub, [item("BOOT")], {(BERLIN, "BOOT"): 4})
    assert got_again.get(timeout=5).sku == "BOOT"
    again.cancel()


def test_a_hub_whose_feed_is_down_refuses_new_watchers() -> None:
    from stock.watch import StockWatch
    from storeplane_runtime.errors import Unavailable

    hub = StockWatch()
    hub.ensure_live = lambda: False
    with pytest.raises(Unavailable):
        hub.subscribe(BERLIN)
    assert hub.subscriber_count() == 0
