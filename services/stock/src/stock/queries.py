"""Stock's reads (GetItem, GetAvailability, a reservation's owner) on the read engine; GetItem's answers and items
are kept in memory (`answers`, `item_cache`) as the built responses, so a till's scan that hits them builds nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pos.stock.v1 import stock_pb2
from stock import messages, storage
from stock.answers import GetItemAnswers, Key
from stock.domain import ItemNotFound, Level
from stock.item_cache import ItemCache
from storeplane_runtime.db import Database
from storeplane_runtime.stores import Store


class StockQueries:
    """The reads of one replica, with their caches (the commits that drop their entries are wired in main)."""

    def __init__(
        self, database: Database, stores: Mapping[str, Store], *, answers: GetItemAnswers, items: ItemCache
    ) -> None:
        self.database = database
        self.stores = stores
        self.answers = answers
        self.items = items

    def kept_item(self, asked: Key) -> stock_pb2.GetItemResponse | None:
        """GetItem's kept answer to `asked`, if any. Only answers to valid requests are kept, so a kept answer needs
        no checks (stores never change at runtime)."""
        return self.answers.get(asked)

    def get_item(self, asked: Key) -> stock_pb2.GetItemResponse:
        """GetItem of a valid request (store, "sku" or "barcode", the SKU or barcode) from the database; the answer
        is kept unless the item or level changed while it was read."""
        ticket = self.answers.ticket()  # before reading: a change committed after it means the read is not kept
        store_id, kind, key = asked
        store = self.stores[store_id]
        by_barcode = kind == "barcode"
        # One statement reads the level and the item's current revision; the item itself comes from the cache
        # when it is at that revision.
        with self.database.read_engine.connect() as conn:
            shelf = storage.find_on_shelf(
                conn, store_id, sku="" if by_barcode else key, barcode=key if by_barcode else ""
            )
            if shelf is None:
                raise ItemNotFound.of(kind, key)
            cached = self.items.get(shelf.sku, shelf.revision)
            if cached is None:
                item = storage.find_item(conn, sku=shelf.sku)
                if item is None:  # cannot happen: items are never deleted
                    raise ItemNotFound.of("sku", shelf.sku)
                cached = self.items.put(item)
        item = cached.item
        answer = messages.item_answer(
            cached.message,
            price=item.price_in(store.currency),
            currency=store.currency,
            tax_class=item.tax_class,
            level=shelf.level,
        )
        self.answers.put(ticket, asked, item.sku, answer)
        return answer

    def availability(self, store_id: str, skus: Sequence[str]) -> stock_pb2.GetAvailabilityResponse:
        """The levels of the SKUs that are items (zero where a store has none), in the order asked, and the SKUs
        that are not."""
        skus = list(dict.fromkeys(skus))
        with self.database.read_engine.connect() as conn:
            known = storage.known_skus(conn, skus)
            levels = storage.read_levels(conn, store_id, skus)
        return messages.availability_message(
            (levels.get(sku) or Level(store_id, sku) for sku in skus if sku in known),
            [sku for sku in skus if sku not in known],
        )

    def reservation_store(self, reservation_id: str) -> str | None:
        """The store a reservation belongs to (None: no such reservation), for the ownership check of a call that
        names it by id."""
        with self.database.read_engine.connect() as conn:
            found = storage.find_reservation(conn, reservation_id)
        return found.store_id if found is not None else None
