"""GetItem's kept answers: dropped by every change of their item or level (this replica's, or another's through the
committed-events feed), never kept from a read that raced a change, and not trusted while the feed is down."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from stock_kit import BERLIN, ZURICH, RunningStock, item, load, reserve_request

from pos.stock.v1 import stock_pb2
from stock.answers import TOUCHED_MEMORY, GetItemAnswers
from stock.events import ITEM_UPDATED, STOCK_LEVEL_CHANGED
from storeplane_runtime.broadcast import Broadcast
from storeplane_runtime.clock import utcnow
from storeplane_runtime.outbox import PendingEvent
from storeplane_runtime.testing import wait_until

KEY = (BERLIN, "sku", "SHOE")


def _answer(on_hand: int) -> stock_pb2.GetItemResponse:
    return stock_pb2.GetItemResponse(item=stock_pb2.Item(sku="SHOE"), level=stock_pb2.StockLevel(on_hand=on_hand))


def _event(event_type: str, sku: str) -> PendingEvent:
    return PendingEvent("id", event_type, "stock", sku, BERLIN, b"", utcnow())


# --- the cache alone --------------------------------------------------------------------------------------------


def test_a_read_that_raced_a_change_of_its_sku_is_not_kept_but_one_of_another_sku_is() -> None:
    answers = GetItemAnswers()
    ticket = answers.ticket()
    answers.changed(["SHOE"])  # committed while the reader was reading: what it read may be older
    answers.put(ticket, KEY, "SHOE", _answer(5))
    assert answers.get(KEY) is None
    answers.put(ticket, (BERLIN, "sku", "SOCK"), "SOCK", _answer(1))
    assert answers.get((BERLIN, "sku", "SOCK")) == _answer(1)
    later = answers.ticket()  # taken after the change: the read saw it
    answers.put(later, KEY, "SHOE", _answer(4))
    assert answers.get(KEY) == _answer(4)


def test_a_change_drops_every_answer_showing_the_sku_in_every_store_and_by_barcode() -> None:
    answers = GetItemAnswers()
    keys = [KEY, (ZURICH, "sku", "SHOE"), (BERLIN, "barcode", "4000000000017")]
    for key in keys:
        answers.put(answers.ticket(), key, "SHOE", _answer(5))
    answers.put(answers.ticket(), (BERLIN, "sku", "SOCK"), "SOCK", _answer(1))
    answers.committed([_event(STOCK_LEVEL_CHANGED, "SHOE"), _event("pos.stock.v1.StockLow", "SOCK")])
    assert [answers.get(k) for k in keys] == [None, None, None]
    assert answers.get((BERLIN, "sku", "SOCK")) is not None  # StockLow changes nothing an answer shows
    answers.broadcast(Broadcast(ITEM_UPDATED, "", "", "SOCK"))
    assert len(answers) == 0


def test_a_broadcast_without_a_subject_or_a_feed_gap_drops_everything_and_voids_open_tickets() -> None:
    answers = GetItemAnswers()
    answers.put(answers.ticket(), KEY, "SHOE", _answer(5))
    answers.broadcast(Broadcast(STOCK_LEVEL_CHANGED, BERLIN, "", ""))  # an older replica's notification
    assert len(answers) == 0
    ticket = answers.ticket()
    answers.clear()
    answers.put(ticket, KEY, "SHOE", _answer(5))
    assert answers.get(KEY) is None
    answers.put(answers.ticket(), KEY, "SHOE", _answer(5))
    assert answers.get(KEY) is not None


def test_nothing_is_served_or_kept_while_the_feed_is_down_and_nothing_outlives_its_ttl() -> None:
    live = [True]
    now = [100.0]
    answers = GetItemAnswers(ttl_seconds=10, live=lambda: live[0], clock=lambda: now[0])
    answers.put(answers.ticket(), KEY, "SHOE", _answer(5))
    live[0] = False
    assert answers.get(KEY) is None and answers.ticket() is None
    answers.put(None, (BERLIN, "sku", "SOCK"), "SOCK", _answer(1))
    assert answers.get((BERLIN, "sku", "SOCK")) is None
    live[0] = True
    assert answers.get(KEY) is not None
    now[0] += 10.5
    assert answers.get(KEY) is None


def test_the_cache_is_bounded_and_forgetting_old_changes_voids_older_tickets() -> None:
    answers = GetItemAnswers(capacity=2)
    for sku in ("A", "B", "C"):
        answers.put(answers.ticket(), (BERLIN, "sku", sku), sku, _answer(1))
    assert len(answers) == 2 and answers.get((BERLIN, "sku", "A")) is None
    ticket = answers.ticket()
    answers.changed(f"X{n}" for n in range(TOUCHED_MEMORY + 1))  # too many to remember which changed when
    answers.put(ticket, KEY, "SHOE", _answer(5))
    assert answers.get(KEY) is None
    answers.put(answers.ticket(), KEY, "SHOE", _answer(5))
    assert answers.get(KEY) is not None
    assert GetItemAnswers(capacity=0).ticket() is None  # off


# --- over gRPC ----------------------------------------------------------------------------------------------------


def _get(stock: RunningStock, **key: str) -> stock_pb2.GetItemResponse:
    return stock.stub.GetItem(stock_pb2.GetItemRequest(store_id=BERLIN, **key), timeout=10)


def test_a_caller_reads_its_own_writes_through_kept_answers(stock: RunningStock) -> None:
    load(stock.stub, [item("SHOE", barcode="4000000000017")], {(BERLIN, "SHOE"): 5})
    assert _get(stock, sku="SHOE").level.available == 5
    assert _get(stock, barcode="4000000000017").level.available == 5
    assert len(stock.servicer.queries.answers) == 2  # both kept
    stock.stub.Reserve(reserve_request("basket", {"SHOE": 2}), timeout=10)
    assert _get(stock, sku="SHOE").level.available == 3  # at once: the commit dropped the answers
    assert _get(stock, barcode="4000000000017").level.reserved == 2
    stock.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="reprice", item=item("SHOE", barcode="4000000000017", eur=900))]),
        timeout=30,
    )
    assert _get(stock, barcode="4000000000017").price.amount_minor == 900


@pytest.fixture
def replicas(make_postgres_url: Callable[[], str], make_stock: Callable[..., RunningStock]) -> tuple[RunningStock, ...]:
    url = make_postgres_url()
    return make_stock(url), make_stock(url)


def test_an_answer_kept_by_one_replica_is_dropped_by_a_change_another_replica_commits(
    replicas: tuple[RunningStock, ...],
) -> None:
    reader, writer = replicas
    load(writer.stub, [item("SHOE", barcode="4000000000017")], {(BERLIN, "SHOE"): 5})
    assert _get(reader, barcode="4000000000017").level.available == 5
    assert _get(reader, barcode="4000000000017").level.available == 5
    assert len(reader.servicer.queries.answers) == 1
    writer.stub.Reserve(reserve_request("basket", {"SHOE": 2}), timeout=10)
    wait_until(lambda: _get(reader, barcode="4000000000017").level.available == 3, 5, "level change not seen")
    writer.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="reprice", item=item("SHOE", barcode="4000000000017", eur=900))]),
        timeout=30,
    )
    wait_until(lambda: _get(reader, sku="SHOE").price.amount_minor == 900, 5, "price change not seen")


def test_a_replica_whose_feed_lost_its_connection_forgets_its_answers_and_keeps_serving(
    replicas: tuple[RunningStock, ...],
) -> None:
    from sqlalchemy import text

    reader, writer = replicas
    load(writer.stub, [item("SHOE")], {(BERLIN, "SHOE"): 5})
    _get(reader, sku="SHOE")
    assert len(reader.servicer.queries.answers) == 1
    database = writer.app.database
    assert database is not None
    with database.engine.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
            )
        )
        conn.commit()
    wait_until(lambda: len(reader.servicer.queries.answers) == 0, 5, "answers kept across a gap in the feed")
    writer.stub.Reserve(reserve_request("basket", {"SHOE": 1}), timeout=10)
    wait_until(lambda: _get(reader, sku="SHOE").level.available == 4, 5, "not served after the gap")
