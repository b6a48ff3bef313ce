"""GetItem's item cache: served only at the item's current revision, so a changed item is never served stale."""

from __future__ import annotations

from stock_kit import BERLIN, RunningStock, item, load

from pos.stock.v1 import stock_pb2
from stock.domain import Item
from stock.events import ITEM_UPDATED
from stock.item_cache import ItemCache
from storeplane_runtime.clock import utcnow
from storeplane_runtime.outbox import PendingEvent


def _item(revision: int, price: int = 100) -> Item:
    return Item("SHOE", "Shoe", "standard", ("400",), {"EUR": price}, revision=revision, updated_at=utcnow())


def test_an_entry_is_served_only_at_the_revision_asked_for_and_never_replaced_by_an_older_one() -> None:
    cache = ItemCache()
    cache.put(_item(2, price=200))
    assert cache.get("SHOE", 2) is not None and cache.get("SHOE", 2).item.prices["EUR"] == 200  # type: ignore[union-attr]
    assert cache.get("SHOE", 3) is None
    cache.put(_item(1, price=100))  # a reader that read before the change arrives late
    assert cache.get("SHOE", 1) is None and cache.get("SHOE", 2) is not None


def test_a_committed_item_update_drops_the_entry_and_the_oldest_entry_goes_when_full() -> None:
    cache = ItemCache(capacity=2)
    cache.put(_item(1))
    event = PendingEvent("id", ITEM_UPDATED, "stock", "SHOE", "", b"", utcnow())
    cache.committed([event])
    assert len(cache) == 0
    for sku in ("A", "B", "C"):
        cache.put(Item(sku, sku, "standard", revision=1))
    assert (cache.get("A", 1), cache.get("C", 1) is not None, len(cache)) == (None, True, 2)


def test_get_item_after_an_import_changed_the_price_returns_the_new_price(stock: RunningStock) -> None:
    load(stock.stub, [item("CAP", barcode="4000000000024", eur=1000)], {(BERLIN, "CAP"): 3})
    before = stock.stub.GetItem(stock_pb2.GetItemRequest(store_id=BERLIN, barcode="4000000000024"))
    assert (before.price.amount_minor, before.item.revision, before.level.on_hand) == (1000, 1, 3)
    stock.stub.ImportItems(
        iter([stock_pb2.ImportItemsRequest(request_id="reprice", item=item("CAP", barcode="4000000000024", eur=1200))]),
        timeout=30,
    )
    after = stock.stub.GetItem(stock_pb2.GetItemRequest(store_id=BERLIN, barcode="4000000000024"))
    assert (after.price.amount_minor, after.item.revision) == (1200, 2)
    assert stock.stub.GetItem(stock_pb2.GetItemRequest(store_id=BERLIN, sku="CAP")) == after
