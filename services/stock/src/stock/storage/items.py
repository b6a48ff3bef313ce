"""Items, their barcodes and prices: lookups, the revision-checked read of GetItem, and import writes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, bindparam, select, update

from stock.domain import Item, Level
from stock.storage.tables import item_barcodes, items, stock_levels
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, driver_sql, is_postgres

# Statements are built once: building and cache-keying a statement per call cost more than its round trip.
_ITEM_BY_SKU = select(items).where(items.c.sku == bindparam("sku"))
_ITEMS_BY_SKUS = select(items).where(items.c.sku.in_(bindparam("skus", expanding=True)))
_ITEM_BY_BARCODE = (
    select(items)
    .join(item_barcodes, item_barcodes.c.sku == items.c.sku)
    .where(item_barcodes.c.barcode == bindparam("barcode"))
)
_KNOWN = select(items.c.sku, items.c.reorder_point).where(items.c.sku.in_(bindparam("skus", expanding=True)))
# PostgreSQL: one array parameter, so the text stays the same (and prepared) whatever the number of SKUs.
_KNOWN_PG = "SELECT sku, reorder_point FROM items WHERE sku = ANY(CAST(%(skus)b AS text[]))"
_OWNERS = select(item_barcodes).where(item_barcodes.c.barcode.in_(bindparam("barcodes", expanding=True)))

_SHELF = items.outerjoin(
    stock_levels, (stock_levels.c.store_id == bindparam("store_id")) & (stock_levels.c.sku == items.c.sku)
)
_SHELF_COLUMNS = (
    items.c.sku,
    items.c.revision,
    stock_levels.c.on_hand,
    stock_levels.c.reserved,
    stock_levels.c.updated_at,
)
_SHELF_BY_SKU = select(*_SHELF_COLUMNS).select_from(_SHELF).where(items.c.sku == bindparam("sku"))
_SHELF_BY_BARCODE = (
    select(*_SHELF_COLUMNS)
    .select_from(_SHELF.join(item_barcodes, item_barcodes.c.sku == items.c.sku))
    .where(item_barcodes.c.barcode == bindparam("barcode"))
)

# PostgreSQL: the same reads as text for the driver (GetItem's misses; the SQLAlchemy layers cost more than the read).
_SHELF_PG = (
    "SELECT i.sku, i.revision, l.on_hand, l.reserved, l.updated_at FROM items AS i"
    " LEFT JOIN stock_levels AS l ON l.store_id = %(store_id)s AND l.sku = i.sku"
)
_SHELF_BY_SKU_PG = _SHELF_PG + " WHERE i.sku = %(sku)s"
_SHELF_BY_BARCODE_PG = _SHELF_PG + " JOIN item_barcodes AS b ON b.sku = i.sku WHERE b.barcode = %(barcode)s"
_ITEM_COLUMNS_PG = "i.sku, i.name, i.tax_class, i.barcodes, i.prices, i.reorder_point, i.revision, i.updated_at"
_ITEM_BY_SKU_PG = f"SELECT {_ITEM_COLUMNS_PG} FROM items AS i WHERE i.sku = %(sku)s"
_ITEM_BY_BARCODE_PG = (
    f"SELECT {_ITEM_COLUMNS_PG} FROM items AS i JOIN item_barcodes AS b ON b.sku = i.sku WHERE b.barcode = %(barcode)s"
)


def _item(row: Any) -> Item:
    return Item(
        sku=row.sku,
        name=row.name,
        tax_class=row.tax_class,
        barcodes=tuple(row.barcodes),
        prices=dict(row.prices),
        reorder_point=row.reorder_point,
        revision=row.revision,
        updated_at=as_utc(row.updated_at),
    )


def find_item(conn: Db, *, sku: str = "", barcode: str = "") -> Item | None:
    if is_postgres(conn):
        if barcode:
            row = driver_sql(conn, _ITEM_BY_BARCODE_PG, {"barcode": barcode}).fetchone()
        else:
            row = driver_sql(conn, _ITEM_BY_SKU_PG, {"sku": sku}).fetchone()
    elif barcode:
        row = conn.execute(_ITEM_BY_BARCODE, {"barcode": barcode}).first()
    else:
        row = conn.execute(_ITEM_BY_SKU, {"sku": sku}).first()
    return None if row is None else _item(row)


def find_items(conn: Db, skus: Collection[str]) -> dict[str, Item]:
    if not skus:
        return {}
    return {row.sku: _item(row) for row in conn.execute(_ITEMS_BY_SKUS, {"skus": list(skus)})}


@dataclass(frozen=True)
class Shelf:
    """What GetItem reads in one statement: which item (and its revision) and its level in one store."""

    sku: str
    revision: int
    level: Level


def find_on_shelf(conn: Db, store_id: str, *, sku: str = "", barcode: str = "") -> Shelf | None:
    """The item's SKU and revision and its level in the store (zero when it has none); None if no such item."""
    if is_postgres(conn):
        if barcode:
            row = driver_sql(conn, _SHELF_BY_BARCODE_PG, {"store_id": store_id, "barcode": barcode}).fetchone()
        else:
            row = driver_sql(conn, _SHELF_BY_SKU_PG, {"store_id": store_id, "sku": sku}).fetchone()
    elif barcode:
        row = conn.execute(_SHELF_BY_BARCODE, {"store_id": store_id, "barcode": barcode}).first()
    else:
        row = conn.execute(_SHELF_BY_SKU, {"store_id": store_id, "sku": sku}).first()
    if row is None:
        return None
    if row.on_hand is None:
        return Shelf(row.sku, row.revision, Level(store_id, row.sku))
    return Shelf(row.sku, row.revision, Level(store_id, row.sku, row.on_hand, row.reserved, as_utc(row.updated_at)))


def known_skus(conn: Db, skus: Collection[str]) -> dict[str, int | None]:
    """SKU -> reorder point of those SKUs that are items."""
    if not skus:
        return {}
    if is_postgres(conn):
        rows = driver_sql(conn, _KNOWN_PG, {"skus": list(skus)}).fetchall()
    else:
        rows = conn.execute(_KNOWN, {"skus": list(skus)}).fetchall()
    return {sku: reorder_point for sku, reorder_point in rows}


def barcode_owners(conn: Db, barcodes: Collection[str]) -> dict[str, str]:
    if not barcodes:
        return {}
    return {row.barcode: row.sku for row in conn.execute(_OWNERS, {"barcodes": list(barcodes)})}


_INSERT_ITEMS = items.insert()
_INSERT_BARCODES = item_barcodes.insert()
_DELETE_BARCODES = item_barcodes.delete().where(item_barcodes.c.sku.in_(bindparam("skus", expanding=True)))
_UPDATE_ITEM = (
    update(items)
    .where(items.c.sku == bindparam("b_sku"))
    .values(
        name=bindparam("name"),
        tax_class=bindparam("tax_class"),
        barcodes=bindparam("barcodes", type_=JSON),
        prices=bindparam("prices", type_=JSON),
        reorder_point=bindparam("reorder_point"),
        revision=bindparam("revision"),
        updated_at=bindparam("updated_at"),
    )
)


def save_items(conn: Db, created: Sequence[Item], updated: Sequence[Item]) -> None:
    """Insert new items, replace changed ones, and keep the barcode lookup in step."""

    def values(item: Item) -> dict[str, Any]:
        return {
            "sku": item.sku,
            "name": item.name,
            "tax_class": item.tax_class,
            "barcodes": list(item.barcodes),
            "prices": dict(item.prices),
            "reorder_point": item.reorder_point,
            "revision": item.revision,
            "updated_at": item.updated_at,
        }

    if created:
        conn.execute(_INSERT_ITEMS, [values(i) for i in created])
    if updated:
        conn.execute(_DELETE_BARCODES, {"skus": [i.sku for i in updated]})
        conn.execute(_UPDATE_ITEM, [{**values(i), "b_sku": i.sku} for i in updated])
    links = [{"barcode": b, "sku": i.sku} for i in (*created, *updated) for b in i.barcodes]
    if links:
        conn.execute(_INSERT_BARCODES, links)
