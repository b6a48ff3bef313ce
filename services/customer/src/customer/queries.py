"""Customer reads on the read engine: by id (tombstones too), by a personal key (live customers only), and the
export's keyset pages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from customer import storage
from customer.domain import Customer, CustomerNotFound
from storeplane_runtime.db import Database


class CustomerQueries:
    """The reads of the customer service."""

    def __init__(self, database: Database, *, export_page_size: int) -> None:
        self.database = database
        self.export_page_size = export_page_size

    def get(self, customer_id: str) -> Customer:
        """The customer or its tombstone."""
        with self.database.read_engine.connect() as conn:
            found = storage.find_customer(conn, "id", customer_id)
        if found is None:
            raise CustomerNotFound.by("id", customer_id)
        return found

    def find(self, kind: str, key: str) -> Customer:
        """The live customer whose `kind` ("id", "email", "phone", "loyalty_card_number"; normalised) is `key`."""
        with self.database.read_engine.connect() as conn:
            found = storage.find_customer(conn, kind, key)
        if found is None or found.erased:
            raise CustomerNotFound.by(kind, key if kind == "id" else "")
        return found

    def export(
        self, *, since: datetime | None, include_erased: bool, go_on: Callable[[], bool] = lambda: True
    ) -> Iterator[Customer]:
        """Every customer changed at or after `since`, in (updated_at, customer_id) order, one page per statement
        on a connection held only for that statement: memory holds one page, no transaction stays open, and a
        customer changed during the export moves behind the cursor and comes again (never missed). Stops when
        `go_on()` turns false (the client cancelled or its deadline passed)."""
        after: tuple[datetime, str] | None = None
        while go_on():
            with self.database.read_engine.connect() as conn:
                page = storage.export_page(
                    conn, since=since, after=after, include_erased=include_erased, limit=self.export_page_size
                )
            yield from page
            if len(page) < self.export_page_size:
                return
            after = (page[-1].updated_at, page[-1].customer_id)
