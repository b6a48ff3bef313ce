"""ERP imports: row-by-row validation, exact summaries, idempotent streams, 100,000 rows in one stream."""

from __future__ import annotations

import grpc
import pytest
from stock_kit import BERLIN, TOKYO, RunningStock, item

from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2
from storeplane_runtime.errors import details_of

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
        (40_000, "sku is empty"),
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
