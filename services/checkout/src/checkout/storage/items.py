"""Checkout's item cache: stock's items as ItemUpdated (or a GetItem on a miss) told them; a newer revision wins."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, delete, select

from checkout.domain.baskets import Item
from checkout.storage.tables import item_barcodes, items
from storeplane_runtime.sql import Db, driver_sql, insert_for, is_postgres

# Built once (every scan runs one of them).
_BY_SKU = select(items).where(items.c.sku == bindparam("k_sku"))
_BY_BARCODE = (
    select(items)
    .join(item_barcodes, item_barcodes.c.sku == items.c.sku)
    .where(item_barcodes.c.barcode == bindparam("k_barcode"))
)


_COLUMNS = ", ".join(f"i.{column.name}" for column in items.c)
_BY_BARCODE_PG = (
    f"SELECT {_COLUMNS} FROM checkout_items AS i JOIN checkout_item_barcodes AS b ON b.sku = i.sku"
    " WHERE b.barcode = %(k_barcode)s"
)


def find_item(conn: Db, *, sku: str = "", barcode: str = "") -> Item | None:
    """The cached item with this SKU (or barcode); None when checkout has not heard of it."""
    if barcode and is_postgres(conn):
        row = driver_sql(conn, _BY_BARCODE_PG, {"k_barcode": barcode}).fetchone()
    elif barcode:
        row = conn.execute(_BY_BARCODE, {"k_barcode": barcode}).first()
    else:
        row = conn.execute(_BY_SKU, {"k_sku": sku}).first()
    if row is None:
        return None
    return Item(
        sku=row.sku,
        name=row.name,
        tax_class=row.tax_class,
        prices={str(k): int(v) for k, v in row.prices.items()},
        barcodes=tuple(row.barcodes),
        revision=int(row.revision),
    )


def save_item(conn: Db, item: Item, now: datetime) -> bool:
    """Keep `item` unless a revision as new is cached already; True when it was kept. Its barcodes point to it (a
    barcode moved from another item moves here)."""
    current = conn.execute(select(items.c.revision).where(items.c.sku == item.sku).with_for_update()).scalar()
    if current is not None and current >= item.revision:
        return False
    values = {
        "name": item.name,
        "tax_class": item.tax_class,
        "prices": dict(item.prices),
        "barcodes": list(item.barcodes),
        "revision": item.revision,
        "updated_at": now,
    }
    stmt = insert_for(conn, items).values(sku=item.sku, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[items.c.sku], set_=values))
    conn.execute(delete(item_barcodes).where(item_barcodes.c.sku == item.sku))
    for barcode in dict.fromkeys(item.barcodes):
        stmt = insert_for(conn, item_barcodes).values(barcode=barcode, sku=item.sku)
        conn.execute(stmt.on_conflict_do_update(index_elements=[item_barcodes.c.barcode], set_={"sku": item.sku}))
    return True
