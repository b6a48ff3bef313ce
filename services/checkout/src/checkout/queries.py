"""Checkout's reads: baskets, sales, the owner store of a basket or sale (for the ownership check of calls naming them
by id), and items (own cache first, stock.GetItem on a miss, which then fills the cache)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import DBAPIError

from checkout import storage, use_cases
from checkout.domain.baskets import Basket, BasketNotFound, Item
from checkout.domain.sales import Sale, SaleNotFound
from checkout.peers import Peers
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.sql import Db

NAME = "checkout"

log = logging.getLogger(__name__)


# Owner stores remembered per process: a basket's or sale's store never changes, so a remembered answer is never
# stale. Past this many, the memory starts again (a miss costs one read).
OWNERS_REMEMBERED = 100_000


class CheckoutQueries:
    def __init__(self, database: Database, peers: Peers) -> None:
        self.database = database
        self.peers = peers
        # (kind, id) -> store: only stores read from the database or of a basket just opened, never an absence.
        self._owners: dict[tuple[str, str], str] = {}

    def _remember_owner(self, kind: str, resource_id: str, store_id: str) -> None:
        if len(self._owners) >= OWNERS_REMEMBERED:
            self._owners.clear()
        self._owners[(kind, resource_id)] = store_id

    def opened(self, basket_id: str, store_id: str) -> None:
        """A basket just opened (committed) in `store_id`: the next call naming it needs no read to check its owner."""
        self._remember_owner("basket", basket_id, store_id)

    def basket_store(self, basket_id: str) -> str | None:
        """The store that owns the basket; None when there is no such basket."""
        return self._owner("basket", basket_id, storage.basket_store)

    def sale_store(self, sale_id: str) -> str | None:
        """The store that made the sale; None when there is no such sale."""
        return self._owner("sale", sale_id, storage.sale_store)

    def _owner(self, kind: str, resource_id: str, read: Callable[[Db, str], str | None]) -> str | None:
        store_id = self._owners.get((kind, resource_id))
        if store_id is None:
            with self.database.read_engine.connect() as conn:
                store_id = read(conn, resource_id)
            if store_id is not None:
                self._remember_owner(kind, resource_id, store_id)
        return store_id

    def basket(self, basket_id: str) -> Basket:
        with self.database.read_engine.connect() as conn:
            basket = storage.find_basket(conn, basket_id)
        if basket is None:
            raise BasketNotFound(f"no basket {basket_id[:64]!r}", metadata={"basket_id": basket_id[:64]})
        return basket

    def sale(self, sale_id: str) -> Sale:
        with self.database.read_engine.connect() as conn:
            sale = storage.find_sale(conn, sale_id)
        if sale is None:
            raise SaleNotFound(f"no sale {sale_id[:64]!r}", metadata={"sale_id": sale_id[:64]})
        return sale

    def sales(
        self,
        store_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        customer_id: str,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Sale]:
        with self.database.read_engine.connect() as conn:
            return storage.list_sales(
                conn, store_id, start=start, end=end, customer_id=customer_id, after=after, limit=limit
            )

    def cached_item(self, conn: Db, *, sku: str = "", barcode: str = "") -> Item | None:
        """The item from checkout's cache, read on `conn` (a unit of work's); None when checkout has not heard of it."""
        return storage.find_item(conn, sku=sku, barcode=barcode)

    def item(self, store_id: str, *, sku: str = "", barcode: str = "") -> Item:
        """The item from checkout's cache; on a miss from stock (ItemNotFound / UNAVAILABLE), kept for next time."""
        with self.database.read_engine.connect() as conn:
            item = storage.find_item(conn, sku=sku, barcode=barcode)
        if item is not None:
            return item
        item = self.peers.get_item(store_id, sku=sku, barcode=barcode)
        try:
            with UnitOfWork(self.database, source=NAME) as uow:
                use_cases.cache_item(uow, item, utcnow())
                uow.commit()
        except DBAPIError:  # a concurrent scan cached it at the same moment: the item is known either way
            log.info("item cache write conflicted", extra={"sku": item.sku})
        return item
