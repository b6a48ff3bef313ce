"""ERP imports: row-by-row validation, exact summaries, idempotent streams, 100,000 rows in one stream."""

from __future__ import annotations

import grpc
import pytest
from stock_kit import BERLIN, TOKYO, ZURICH, RunningStock, item, level, load, reserve_request

from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2
from storeplane_runtime.status import details_of

ROWS = 100_000
SKUS = 25_000  # x 4 stores = 100,000 level rows
STORES = ["berlin-mitte", "zurich-bahnhofstrasse", "new-york-5th-ave", "tokyo-shibuya"]
BAD = {17: "atlantis", 40_000: "", 77_777: "GHOST"}  # row number -> what is wrong


def _items_stream(request_id: str, skus: int = SKUS):  # type: ignore[no-untyped-def]
    for i in range(skus):
        yield stock_pb2.ImportItemsRequest(request_id=request_id, item=item(f"SKU-{i:06d}", barcode=f"40{i:011d}"))


def _levels_stream(request_id: str, on_hand: int = 7, skus: int = SKUS):  # type: ignore[no-untyped-def]
    n = 0
    for i in range(skus):
        for store in STORES:
            n += 1
            row = stock_pb2.StockLevelRow(store_id=store, sku=f"SKU-{i:06d}", on_hand=on_hand)
            if BAD.get(n) == "atlantis":
                row.store_id = "atlantis"
            elif BAD.get(n) == "":
                row.sku = ""
            elif BAD.get(n) == "GHOST":
                row.sku = "GHOST"
            yield stock_pb2.ImportStockLevelsRequest(request_id=request_id, row=row)


def test_hundred_thousand_level_rows_with_a_few_bad_ones(make_stock, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    # SQLite only, and one stream of 100,000 rows, to keep the suite's time bounded (gRPC alone streams a few thousand
    # rows/s on a small machine); re-imports and replays are proven on both databases by the test below.
    stock: RunningStock = make_stock(sqlite_url)
    items = stock.stub.ImportItems(_items_stream("items-1"), timeout=300).summary
    assert (items.received, items.created, items.rejected) == (SKUS, SKUS, 0)
    first = stock.stub.ImportStockLevels(_levels_stream("levels-1"), timeout=300).summary
    assert (first.received, first.created, first.updated, first.unchanged, first.rejected) == (ROWS, ROWS - 3, 0, 0, 3)
    assert [(r.row_number, r.reason) for r in first.rejected_rows] == [
        (17, "unknown store 'atlantis'"),
        (40_000, "sku must not be empty"),
        (77_777, "unknown SKU GHOST"),
    ]
    reply = stock.stub.GetAvailability(stock_pb2.GetAvailabilityRequest(store_id=TOKYO, skus=["SKU-024999"]))
    assert reply.levels[0].on_hand == 7


def test_reimport_counts_unchanged_rows_and_a_replayed_stream_applies_nothing(stock: RunningStock) -> None:
    skus = 500  # 2,000 rows: two chunks of 1,000; of the bad rows only row 17 is among them
    rows = skus * 4
    stock.stub.ImportItems(_items_stream("items-1", skus), timeout=60)
    first = stock.stub.ImportStockLevels(_levels_stream("levels-1", skus=skus), timeout=60).summary
    assert (first.received, first.created, first.updated, first.unchanged, first.rejected) == (rows, rows - 1, 0, 0, 1)
    assert [(r.row_number, r.reason) for r in first.rejected_rows] == [(17, "unknown store 'atlantis'")]
    again = stock.stub.ImportStockLevels(_levels_stream("levels-2", skus=skus), timeout=60).summary
    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, rows - 1, 1)
    changed = stock.stub.ImportStockLevels(_levels_stream("levels-3", on_hand=9, skus=skus), timeout=60).summary
    assert (changed.created, changed.updated, changed.unchanged, changed.rejected) == (0, rows - 1, 0, 1)
    replay = stock.stub.ImportStockLevels(_levels_stream("levels-1", skus=skus), timeout=60).summary
    assert replay == first  # same key, same rows: the first summary, and nothing applied (on hand stays 9)
    reply = stock.stub.GetAvailability(stock_pb2.GetAvailabilityRequest(store_id=TOKYO, skus=["SKU-000499"]))
    assert reply.levels[0].on_hand == 9


def test_item_import_rejects_bad_rows_and_keeps_the_good_ones(stock: RunningStock) -> None:
    rows = [
        item("GOOD-1", barcode="111"),
        item("", barcode="222"),
        item("GOOD-2", barcode="111"),  # barcode taken by GOOD-1
        stock_pb2.Item(
            sku="BAD-PRICE",
            name="x",
            tax_class="standard",
            prices=[common_pb2.Money(amount_minor=1, currency_code="XXX")],
        ),
        item("GOOD-3"),
    ]
    summary = stock.stub.ImportItems(
        iter(stock_pb2.ImportItemsRequest(request_id="it-1", item=r) for r in rows), timeout=30
    ).summary
    assert (summary.received, summary.created, summary.rejected) == (5, 2, 3)
    reasons = {r.row_number: r.reason for r in summary.rejected_rows}
    assert reasons[2] == "item.sku: must not be empty"
    assert reasons[3] == "barcode 111 already used by SKU GOOD-1"
    assert "unknown currency" in reasons[4]
    changed = [item("GOOD-1", barcode="111", eur=1100), item("GOOD-3")]
    second = stock.stub.ImportItems(
        iter(stock_pb2.ImportItemsRequest(request_id="it-2", item=r) for r in changed), timeout=30
    ).summary
    assert (second.updated, second.unchanged) == (1, 1)
    got = stock.stub.GetItem(stock_pb2.GetItemRequest(store_id=BERLIN, sku="GOOD-1"))
    assert (got.price.amount_minor, got.item.revision) == (1100, 2)
    with pytest.raises(grpc.RpcError) as caught:
        stock.stub.ImportItems(iter(stock_pb2.ImportItemsRequest(request_id="it-2", item=r) for r in rows), timeout=30)
    assert details_of(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


# --- batched rows (`rows` / `items`) ----------------------------------------------------------------------------


def _level_row(store: str, sku: str, on_hand: int) -> stock_pb2.StockLevelRow:
    return stock_pb2.StockLevelRow(store_id=store, sku=sku, on_hand=on_hand)


def _level_events(stock: RunningStock) -> list[tuple[str, object]]:
    """(event type, decoded event) of every stock level event in the outbox, in outbox order."""
    from sqlalchemy import select

    from pos.stock.v1 import events_pb2
    from storeplane_runtime.tables import outbox_table as t

    decoders = {
        "pos.stock.v1.StockLevelChanged": events_pb2.StockLevelChanged,
        "pos.stock.v1.StockLow": events_pb2.StockLow,
    }
    assert stock.app.database is not None
    with stock.app.database.engine.connect() as conn:
        rows = conn.execute(select(t.c.event_type, t.c.payload).order_by(t.c.id)).all()
    return [(r.event_type, decoders[r.event_type].FromString(r.payload)) for r in rows if r.event_type in decoders]


def _per_level(events: list[tuple[str, object]]) -> dict[tuple[str, str], list[tuple[str, int, int]]]:
    """The events of each level, in outbox order: (kind, on_hand, on_hand_delta or available). An import keeps the
    order of the events of one level (its rows always take the same writer); levels interleave as they may."""
    grouped: dict[tuple[str, str], list[tuple[str, int, int]]] = {}
    for kind, e in events:
        if kind == "pos.stock.v1.StockLevelChanged":
            c = e.change  # type: ignore[attr-defined]
            grouped.setdefault((c.store_id, c.sku), []).append(("changed", c.on_hand, c.on_hand_delta))
        else:
            grouped.setdefault((e.store_id, e.sku), []).append(("low", -1, e.available))  # type: ignore[attr-defined]
    return grouped


def test_single_and_batched_rows_are_numbered_across_the_stream(stock: RunningStock) -> None:
    stock.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="it", items=[item(f"S-{i}") for i in range(6)])]), timeout=30
    )
    stream = [
        # row, then rows: numbers 1..4
        stock_pb2.ImportStockLevelsRequest(
            request_id="mixed",
            row=_level_row(BERLIN, "S-0", 5),
            rows=[_level_row(BERLIN, "S-1", 6), _level_row("atlantis", "S-2", 7), _level_row(TOKYO, "S-3", 8)],
        ),
        stock_pb2.ImportStockLevelsRequest(request_id="mixed"),  # no row at all: counts nothing
        # rows only: numbers 5..8; the last one sets S-0 again (later rows win)
        stock_pb2.ImportStockLevelsRequest(
            rows=[
                _level_row(BERLIN, "GHOST", 1),
                _level_row(BERLIN, "S-4", -1),
                _level_row(BERLIN, "S-5", 3),
                _level_row(BERLIN, "S-0", 11),
            ]
        ),
        stock_pb2.ImportStockLevelsRequest(request_id="mixed", row=_level_row(BERLIN, "", 1)),  # 9
        stock_pb2.ImportStockLevelsRequest(request_id="other", rows=[_level_row(BERLIN, "S-4", 2)]),  # 10
        stock_pb2.ImportStockLevelsRequest(row=_level_row(TOKYO, "S-4", 0)),  # 11: a new level of 0
    ]
    summary = stock.stub.ImportStockLevels(iter(stream), timeout=30).summary
    assert (summary.received, summary.created, summary.updated, summary.unchanged, summary.rejected) == (11, 5, 1, 0, 5)
    assert [(r.row_number, r.key, r.reason) for r in summary.rejected_rows] == [
        (3, "atlantis/S-2", "unknown store 'atlantis'"),
        (5, "berlin-mitte/GHOST", "unknown SKU GHOST"),
        (6, "berlin-mitte/S-4", "on_hand must be between 0 and 1000000000"),
        (9, "berlin-mitte/", "sku must not be empty"),
        (10, "berlin-mitte/S-4", "request_id differs from the first message's"),
    ]
    assert [level(stock.stub, f"S-{i}").on_hand for i in (0, 1, 4, 5)] == [11, 6, 0, 3]
    assert level(stock.stub, "S-3", TOKYO).on_hand == 8

    # One StockLevelChanged per changed row, a level's in row order, with the quantities before and after.
    events = [(kind, e) for kind, e in _level_events(stock) if kind == "pos.stock.v1.StockLevelChanged"]
    assert _per_level(events) == {
        (BERLIN, "S-0"): [("changed", 5, 5), ("changed", 11, 6)],
        (BERLIN, "S-1"): [("changed", 6, 6)],
        (TOKYO, "S-3"): [("changed", 8, 8)],
        (BERLIN, "S-5"): [("changed", 3, 3)],
    }
    changes = [e.change for _, e in events]  # type: ignore[attr-defined]
    assert {(c.reason, c.reference_id) for c in changes} == {(stock_pb2.STOCK_CHANGE_REASON_IMPORT, "mixed")}


def test_rejections_found_while_applying_a_chunk_carry_the_row_number_of_the_stream(
    make_stock, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    stock: RunningStock = make_stock(database_url, import_chunk_rows=3)  # several chunks per message
    stock.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="it", items=[item(f"K-{i}") for i in range(10)])]), timeout=30
    )
    skus = ["K-0", "K-1", "NOPE-1", "K-2", "K-3", "K-4", "K-5", "NOPE-2", "K-6", "K-7", "K-8", "NOPE-3"]
    stream = [
        stock_pb2.ImportStockLevelsRequest(request_id="chunks", rows=[_level_row(ZURICH, s, 4) for s in skus[:5]]),
        stock_pb2.ImportStockLevelsRequest(request_id="chunks", rows=[_level_row(ZURICH, s, 4) for s in skus[5:]]),
    ]
    summary = stock.stub.ImportStockLevels(iter(stream), timeout=30).summary
    assert (summary.received, summary.created, summary.rejected) == (12, 9, 3)
    assert [(r.row_number, r.key) for r in summary.rejected_rows] == [
        (3, f"{ZURICH}/NOPE-1"),
        (8, f"{ZURICH}/NOPE-2"),
        (12, f"{ZURICH}/NOPE-3"),
    ]


def test_batched_import_repeated_with_its_request_id_returns_the_first_summary(stock: RunningStock) -> None:
    stock.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="it", items=[item(f"R-{i}") for i in range(4)])]), timeout=30
    )
    rows = [_level_row(BERLIN, f"R-{i}", 10 + i) for i in range(4)] + [_level_row(BERLIN, "GHOST", 1)]
    batched = [
        stock_pb2.ImportStockLevelsRequest(request_id="once", row=rows[0], rows=rows[1:3]),
        stock_pb2.ImportStockLevelsRequest(request_id="once", rows=rows[3:]),
    ]
    first = stock.stub.ImportStockLevels(iter(batched), timeout=30).summary
    assert (first.received, first.created, first.rejected) == (5, 4, 1)
    assert [r.row_number for r in first.rejected_rows] == [5]
    stock.stub.AdjustStock(
        stock_pb2.AdjustStockRequest(
            store_id=BERLIN, sku="R-0", delta=5, reason=stock_pb2.ADJUSTMENT_REASON_RECEIPT, request_id="adj"
        )
    )
    # The same rows split otherwise (one per message) are the same import: the first summary, nothing applied.
    one_by_one = [stock_pb2.ImportStockLevelsRequest(request_id="once", row=r) for r in rows]
    assert stock.stub.ImportStockLevels(iter(one_by_one), timeout=30).summary == first
    assert stock.stub.ImportStockLevels(iter(batched), timeout=30).summary == first
    assert level(stock.stub, "R-0").on_hand == 15  # the adjustment stands
    changed = [stock_pb2.ImportStockLevelsRequest(request_id="once", rows=[*rows[:4], _level_row(BERLIN, "R-0", 1)])]
    with pytest.raises(grpc.RpcError) as caught:
        stock.stub.ImportStockLevels(iter(changed), timeout=30)
    assert details_of(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


def test_batched_level_events_carry_reserved_quantities_and_reach_the_reorder_point(stock: RunningStock) -> None:
    load(stock.stub, [item("LOW", reorder=5), item("HELD")], {(BERLIN, "LOW"): 10, (BERLIN, "HELD"): 10})
    stock.stub.Reserve(reserve_request("basket", {"HELD": 4}))
    before = len(_level_events(stock))
    stream = [
        stock_pb2.ImportStockLevelsRequest(
            request_id="count", rows=[_level_row(BERLIN, "LOW", 3), _level_row(BERLIN, "HELD", 7)]
        )
    ]
    summary = stock.stub.ImportStockLevels(iter(stream), timeout=30).summary
    assert (summary.updated, summary.rejected) == (2, 0)
    new = _level_events(stock)[before:]
    assert _per_level(new) == {
        (BERLIN, "LOW"): [("changed", 3, -7), ("low", -1, 3)],
        (BERLIN, "HELD"): [("changed", 7, -3)],
    }
    by_kind = {(kind, getattr(e, "change", e).sku): e for kind, e in new}  # type: ignore[attr-defined]
    low_change = by_kind[("pos.stock.v1.StockLevelChanged", "LOW")]
    low = by_kind[("pos.stock.v1.StockLow", "LOW")]
    held = by_kind[("pos.stock.v1.StockLevelChanged", "HELD")]
    assert (low_change.change.on_hand, low_change.change.on_hand_delta, low_change.change.available) == (3, -7, 3)  # type: ignore[attr-defined]
    assert (low.sku, low.available, low.reorder_point) == ("LOW", 3, 5)  # type: ignore[attr-defined]
    change = held.change  # type: ignore[attr-defined]
    assert (change.on_hand, change.reserved, change.available, change.on_hand_delta) == (7, 4, 3, -3)
    assert level(stock.stub, "HELD").reserved == 4  # an import sets on_hand only
    metas = [e.meta for _, e in new]  # type: ignore[attr-defined]
    assert len({m.event_id for m in metas}) == 3
    assert all(m.source == "/storeplane/stock" and m.correlation_id == "count" for m in metas)
    assert [m.event_type for m in metas] == [kind for kind, _ in new]


@pytest.mark.parametrize("writers", [1, 3])
def test_rows_of_one_level_spread_over_many_chunks_apply_in_stream_order(
    make_stock, database_url: str, writers: int
) -> None:  # type: ignore[no-untyped-def]
    """Chunks of 2 rows, several writers on PostgreSQL: each level's rows still apply one after the other in stream
    order (the last one wins, each event's delta is from the row before), and the summary counts every row."""
    stock: RunningStock = make_stock(database_url, import_chunk_rows=2, import_level_writers=writers)
    skus = [f"L-{i}" for i in range(6)]
    stock.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="items", items=[item(s) for s in skus])]), timeout=30
    )
    keys = [(store, sku) for sku in skus for store in (BERLIN, ZURICH)]  # 12 levels
    rounds = [[(k, (r * 7 + i) % 5) for i, k in enumerate(keys)] for r in range(6)]  # 72 rows; some repeat a value
    rows = [row for one in rounds for row in one]
    stream = [
        stock_pb2.ImportStockLevelsRequest(
            request_id="spread", rows=[_level_row(s, k, n) for (s, k), n in rows[i : i + 9]]
        )
        for i in range(0, len(rows), 9)
    ]
    before = len(_level_events(stock))
    summary = stock.stub.ImportStockLevels(iter(stream), timeout=60).summary

    expected: dict[tuple[str, str], list[tuple[str, int, int]]] = {}
    last: dict[tuple[str, str], int] = {}
    created = updated = unchanged = 0
    for key, n in rows:
        if key not in last:
            created += 1
            if n:
                expected.setdefault(key, []).append(("changed", n, n))
        elif last[key] == n:
            unchanged += 1
        else:
            updated += 1
            expected.setdefault(key, []).append(("changed", n, n - last[key]))
        last[key] = n
    assert (summary.received, summary.created, summary.updated, summary.unchanged, summary.rejected) == (
        72,
        created,
        updated,
        unchanged,
        0,
    )
    changed = [(kind, e) for kind, e in _level_events(stock)[before:] if kind == "pos.stock.v1.StockLevelChanged"]
    assert _per_level(changed) == expected
    for (store, sku), n in last.items():
        assert level(stock.stub, sku, store).on_hand == n


def test_items_batched_and_single_are_imported_in_order_with_stream_row_numbers(stock: RunningStock) -> None:
    stream = [
        stock_pb2.ImportItemsRequest(
            request_id="items", item=item("A", barcode="1"), items=[item("B", barcode="2"), item("", barcode="3")]
        ),
        stock_pb2.ImportItemsRequest(items=[item("C", barcode="1"), item("A", barcode="4", eur=1500)]),  # 4, 5
        stock_pb2.ImportItemsRequest(request_id="items", item=item("D")),  # 6
    ]
    summary = stock.stub.ImportItems(iter(stream), timeout=30).summary
    assert (summary.received, summary.created, summary.updated, summary.rejected) == (6, 3, 1, 2)
    assert [(r.row_number, r.key, r.reason) for r in summary.rejected_rows] == [
        (3, "", "item.sku: must not be empty"),
        (4, "C", "barcode 1 already used by SKU A"),
    ]
    got = stock.stub.GetItem(stock_pb2.GetItemRequest(store_id=BERLIN, barcode="4"))
    assert (got.item.sku, got.price.amount_minor, got.item.revision) == ("A", 1500, 2)  # the later row won
    assert stock.stub.ImportItems(iter(stream), timeout=30).summary == summary
    one_by_one = [
        stock_pb2.ImportItemsRequest(request_id="items", item=i)
        for i in [item("A", barcode="1"), item("B", barcode="2"), item("", barcode="3")]
        + [item("C", barcode="1"), item("A", barcode="4", eur=1500), item("D")]
    ]
    assert stock.stub.ImportItems(iter(one_by_one), timeout=30).summary == summary


def test_events_of_chunks_written_off_the_call_thread_carry_the_caller_trace(stock: RunningStock) -> None:
    from sqlalchemy import select

    from storeplane_runtime.tables import outbox_table as t

    skus = 300  # 1,200 rows: two chunks, written by the import's own thread while the next is read
    stock.stub.ImportItems(_items_stream("items-trace", skus), timeout=60)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    summary = stock.stub.ImportStockLevels(
        _levels_stream("levels-trace", skus=skus),
        timeout=60,
        metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")],
    ).summary
    assert (summary.received, summary.created) == (1200, 1199)  # row 17 names an unknown store
    assert stock.app.database is not None
    with stock.app.database.engine.connect() as conn:
        headers = conn.execute(
            select(t.c.headers).where(t.c.event_type == "pos.stock.v1.StockLevelChanged").order_by(t.c.id)
        ).all()
    assert len(headers) == 1199
    assert {h.headers["traceparent"].split("-")[1] for h in headers} == {trace_id}


def test_a_level_set_again_right_after_a_long_chunk_keeps_the_later_row(make_stock, database_url: str) -> None:  # type: ignore[no-untyped-def]
    """The row of a level at the end of a full chunk, then the same level again: the second row is written after the
    first however long the first one's chunk takes (it locks that level last), not beside it."""
    stock: RunningStock = make_stock(database_url, import_level_writers=3)
    skus = [f"F-{i:03d}" for i in range(250)]
    stock.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="items", items=[item(s) for s in [*skus, "ZZZ"]])]), timeout=60
    )
    filler = [_level_row(store, sku, 1) for sku in skus for store in STORES][:999]
    rows = [*filler, _level_row(ZURICH, "ZZZ", 5), _level_row(ZURICH, "ZZZ", 9)]  # 1,000 rows: a full chunk, then 1
    summary = stock.stub.ImportStockLevels(
        iter([stock_pb2.ImportStockLevelsRequest(request_id="late", rows=rows)]), timeout=60
    ).summary
    assert (summary.received, summary.created, summary.updated) == (1001, 1000, 1)
    assert level(stock.stub, "ZZZ", ZURICH).on_hand == 9
