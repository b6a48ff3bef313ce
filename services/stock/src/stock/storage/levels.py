"""Stock levels: reads, locks and writes. Writers lock level rows in (store, sku) order, always after the one
reservation row they touch, so concurrent reservations, sales and imports cannot deadlock each other."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, tuple_, update

from stock.domain import Level
from stock.storage.items import known_skus
from stock.storage.tables import stock_levels
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, driver_sql, insert_for, is_postgres

# On PostgreSQL a set of rows travels as arrays (`unnest`), so a write of any number of rows is one statement with
# one fixed text (prepared once by the server) instead of a statement per row; those statements go to the driver
# as they are, with parameters in binary (`%(name)b`: no text escaping of every array element).

_sl = stock_levels
_READ = select(_sl).where(_sl.c.store_id == bindparam("store_id"), _sl.c.sku.in_(bindparam("skus", expanding=True)))
_LOCK = _READ.order_by(_sl.c.sku).with_for_update()
_READ_PG = (
    "SELECT store_id, sku, on_hand, reserved, updated_at FROM stock_levels"
    " WHERE store_id = %(store_id)s AND sku = ANY(CAST(%(skus)b AS text[]))"
)
_LOCK_KEYS_SQLITE = (
    select(_sl)
    .where(tuple_(_sl.c.store_id, _sl.c.sku).in_(bindparam("keys", expanding=True)))
    .order_by(_sl.c.store_id, _sl.c.sku)
)
_LOCK_KEYS_PG = (
    "SELECT store_id, sku, on_hand, reserved, updated_at FROM stock_levels"
    " WHERE (store_id, sku) IN (SELECT * FROM unnest(CAST(%(stores)b AS text[]), CAST(%(skus)b AS text[])))"
    " ORDER BY store_id, sku FOR UPDATE"
)
# Imports, in one statement per chunk: which SKUs are items; the existing levels of their rows locked in key order (as
# every writer locks them) and read as they were; on_hand set where it differs; and the rows of items with their
# reorder point and level before (none: missing) returned. The UPDATE joins the locked rows, so it touches only rows
# `old` has locked, and it sees their latest committed version (READ COMMITTED re-reads a row updated concurrently).
_IMPORT_ON_HAND_PG = (
    "WITH v AS (SELECT * FROM unnest(CAST(%(stores)b AS text[]), CAST(%(skus)b AS text[]),"
    "                                CAST(%(on_hand)b AS bigint[])) AS v(store_id, sku, on_hand)),"
    " known AS (SELECT sku, reorder_point FROM items WHERE sku = ANY(CAST(%(skus)b AS text[]))),"
    " old AS (SELECT l.store_id, l.sku, l.on_hand, l.reserved FROM stock_levels AS l"
    "         WHERE (l.store_id, l.sku) IN (SELECT v.store_id, v.sku FROM v JOIN known ON known.sku = v.sku)"
    "         ORDER BY l.store_id, l.sku FOR UPDATE),"
    " changed AS (UPDATE stock_levels AS l SET on_hand = v.on_hand, updated_at = %(now)b"
    "             FROM v JOIN old ON old.store_id = v.store_id AND old.sku = v.sku"
    "             WHERE l.store_id = v.store_id AND l.sku = v.sku AND old.on_hand <> v.on_hand)"
    " SELECT v.store_id, v.sku, known.reorder_point, old.on_hand, old.reserved"
    " FROM v JOIN known ON known.sku = v.sku LEFT JOIN old ON old.store_id = v.store_id AND old.sku = v.sku"
)
_LOCK_QUANTITIES_SQLITE = _LOCK_KEYS_SQLITE.with_only_columns(_sl.c.store_id, _sl.c.sku, _sl.c.on_hand, _sl.c.reserved)
_INSERT_ON_HAND_PG = (
    "INSERT INTO stock_levels (store_id, sku, on_hand, reserved, updated_at)"
    " SELECT v.store_id, v.sku, v.on_hand, 0, %(now)b"
    " FROM unnest(CAST(%(stores)b AS text[]), CAST(%(skus)b AS text[]), CAST(%(on_hand)b AS bigint[]))"
    "      AS v(store_id, sku, on_hand)"
)
_SET_ON_HAND_SQLITE = (
    update(_sl)
    .where(_sl.c.store_id == bindparam("b_store"), _sl.c.sku == bindparam("b_sku"))
    .values(on_hand=bindparam("b_on_hand"), updated_at=bindparam("b_at"))
)
# Reserve's read, in one round trip: the level rows of these (store, sku) keys, locked in key order, and which of the
# SKUs are items (with their reorder points): rows of kind 'L' and 'I'.
_LOCK_WITH_ITEMS_PG = (
    "WITH lv AS MATERIALIZED (SELECT store_id, sku, on_hand, reserved, updated_at FROM stock_levels"
    "            WHERE (store_id, sku) IN (SELECT * FROM unnest(CAST(%(stores)b AS text[]), CAST(%(skus)b AS text[])))"
    "            ORDER BY store_id, sku FOR UPDATE),"
    " it AS (SELECT sku, reorder_point FROM items WHERE sku = ANY(CAST(%(skus)b AS text[])))"
    " SELECT 'L' AS kind, store_id, sku, on_hand, reserved, updated_at, NULL AS reorder_point FROM lv"
    " UNION ALL SELECT 'I', NULL, sku, NULL, NULL, NULL, reorder_point FROM it"
)
_WRITE_SQLITE = (
    update(_sl)
    .where(_sl.c.store_id == bindparam("b_store"), _sl.c.sku == bindparam("b_sku"))
    .values(on_hand=bindparam("b_on_hand"), reserved=bindparam("b_reserved"), updated_at=bindparam("b_at"))
)
WRITE_PG_SQL = (
    "UPDATE stock_levels AS l SET on_hand = v.on_hand, reserved = v.reserved, updated_at = v.updated_at"
    " FROM unnest(CAST(%(stores)b AS text[]), CAST(%(skus)b AS text[]), CAST(%(on_hand)b AS bigint[]),"
    "             CAST(%(reserved)b AS bigint[]), CAST(%(updated_at)b AS timestamptz[]))"
    "      AS v(store_id, sku, on_hand, reserved, updated_at)"
    " WHERE l.store_id = v.store_id AND l.sku = v.sku"
)
_INSERT_SQLITE = _sl.insert()


def _level(row: Any) -> Level:
    return Level(row.store_id, row.sku, row.on_hand, row.reserved, as_utc(row.updated_at))


def level_arrays(levels: Sequence[Level]) -> dict[str, list[Any]]:
    return {
        "stores": [lv.store_id for lv in levels],
        "skus": [lv.sku for lv in levels],
        "on_hand": [lv.on_hand for lv in levels],
        "reserved": [lv.reserved for lv in levels],
        "updated_at": [lv.updated_at for lv in levels],
    }


def read_levels(conn: Db, store_id: str, skus: Collection[str]) -> dict[str, Level]:
    if not skus:
        return {}
    params = {"store_id": store_id, "skus": list(skus)}
    if is_postgres(conn):
        return {row.sku: _level(row) for row in driver_sql(conn, _READ_PG, params)}
    return {row.sku: _level(row) for row in conn.execute(_READ, params)}


def lock_levels(conn: Db, store_id: str, skus: Collection[str]) -> dict[str, Level]:
    """The existing level rows of these SKUs, locked in SKU order until the transaction ends."""
    if not skus:
        return {}
    return {row.sku: _level(row) for row in conn.execute(_LOCK, {"store_id": store_id, "skus": sorted(skus)})}


def lock_levels_of_items(
    conn: Db, keys: Collection[tuple[str, str]]
) -> tuple[dict[tuple[str, str], Level], dict[str, int | None]]:
    """The existing level rows of these (store, sku) keys, locked in key order until the transaction ends, and
    SKU -> reorder point of those SKUs that are items."""
    if not keys:
        return {}, {}
    if not is_postgres(conn):  # SQLite: the writer holds the database lock already
        return lock_level_keys(conn, keys), known_skus(conn, list({sku for _, sku in keys}))
    ordered = sorted(keys)
    params = {"stores": [k[0] for k in ordered], "skus": [k[1] for k in ordered]}
    levels: dict[tuple[str, str], Level] = {}
    known = {}
    for row in driver_sql(conn, _LOCK_WITH_ITEMS_PG, params):
        if row.kind == "L":
            levels[(row.store_id, row.sku)] = _level(row)
        else:
            known[row.sku] = row.reorder_point
    return levels, known


def lock_level_keys(conn: Db, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], Level]:
    """Existing level rows for (store, sku) keys, locked in key order (imports)."""
    if not keys:
        return {}
    ordered = sorted(keys)
    if is_postgres(conn):
        rows = driver_sql(conn, _LOCK_KEYS_PG, {"stores": [k[0] for k in ordered], "skus": [k[1] for k in ordered]})
    else:
        rows = conn.execute(_LOCK_KEYS_SQLITE, {"keys": ordered})
    return {(row.store_id, row.sku): _level(row) for row in rows}


ImportedLevel = tuple[int | None, int | None, int | None]  # reorder point of the item, on_hand and reserved before


def import_on_hand(
    conn: Db, rows: Sequence[tuple[str, str, int]], now: datetime
) -> dict[tuple[str, str], ImportedLevel]:
    """Imports: set on_hand (and updated_at `now`) of the existing levels of (store, sku, on_hand) rows whose SKU is
    an item, where it differs, locking them in key order first. Returns, for each row of an item, the item's reorder
    point and the level's on_hand and reserved before (both None: no level yet, see `insert_imported_levels`). Rows
    of SKUs that are no items are left out. The keys of `rows` are distinct."""
    if not rows:
        return {}
    if is_postgres(conn):
        stores, skus, on_hand = zip(*rows, strict=True)
        params = {"stores": list(stores), "skus": list(skus), "on_hand": list(on_hand), "now": now}
        found = driver_sql(conn, _IMPORT_ON_HAND_PG, params).fetchall()
        return {(store, sku): (point, before, reserved) for store, sku, point, before, reserved in found}
    # SQLite: the writer holds the database lock already; the same result in three statements.
    known = known_skus(conn, list({r[1] for r in rows}))
    keys = sorted((store, sku) for store, sku, _ in rows if sku in known)
    locked = {
        (row.store_id, row.sku): (row.on_hand, row.reserved)
        for row in (conn.execute(_LOCK_QUANTITIES_SQLITE, {"keys": keys}) if keys else ())
    }
    changed = [
        {"b_store": store, "b_sku": sku, "b_on_hand": n, "b_at": now}
        for store, sku, n in rows
        if (store, sku) in locked and locked[(store, sku)][0] != n
    ]
    if changed:
        conn.execute(_SET_ON_HAND_SQLITE, changed)
    result: dict[tuple[str, str], ImportedLevel] = {}
    for store, sku, _ in rows:
        if sku in known:
            before, reserved = locked.get((store, sku), (None, None))
            result[(store, sku)] = (known[sku], before, reserved)
    return result


def insert_imported_levels(conn: Db, rows: Sequence[tuple[str, str, int]], now: datetime) -> None:
    """Imports: insert levels (store, sku, on_hand; reserved 0) that `import_on_hand` found missing. A concurrent
    creator of the same level makes this fail (IntegrityError): the caller applies its chunk again."""
    if not rows:
        return
    if is_postgres(conn):
        stores, skus, on_hand = zip(*rows, strict=True)
        params = {"stores": list(stores), "skus": list(skus), "on_hand": list(on_hand), "now": now}
        driver_sql(conn, _INSERT_ON_HAND_PG, params)
        return
    conn.execute(
        _INSERT_SQLITE,
        [{"store_id": s, "sku": k, "on_hand": n, "reserved": 0, "updated_at": now} for s, k, n in rows],
    )


def create_levels(conn: Db, keys: Iterable[tuple[str, str]], now: datetime) -> None:
    """Zero rows for levels that do not exist yet (a concurrent creator wins quietly)."""
    rows = [
        {"store_id": store, "sku": sku, "on_hand": 0, "reserved": 0, "updated_at": now} for store, sku in sorted(keys)
    ]
    if rows:
        conn.execute(insert_for(conn, stock_levels).on_conflict_do_nothing(), rows)


def write_levels(conn: Db, levels: Sequence[Level]) -> None:
    """Store new quantities of level rows the caller has locked."""
    if not levels:
        return
    if is_postgres(conn):
        driver_sql(conn, WRITE_PG_SQL, level_arrays(levels))
        return
    conn.execute(
        _WRITE_SQLITE,
        [
            {
                "b_store": lv.store_id,
                "b_sku": lv.sku,
                "b_on_hand": lv.on_hand,
                "b_reserved": lv.reserved,
                "b_at": lv.updated_at,
            }
            for lv in levels
        ],
    )


def lock_or_create_levels(conn: Db, store_id: str, skus: Collection[str], now: datetime) -> dict[str, Level]:
    """The level rows of these SKUs in one store, locked in SKU order until the transaction ends; zero rows are
    created first for those that have none."""
    locked = lock_levels(conn, store_id, skus)
    missing = [sku for sku in skus if sku not in locked]
    if missing:
        create_levels(conn, ((store_id, sku) for sku in missing), now)
        locked.update(lock_levels(conn, store_id, missing))
    return locked
