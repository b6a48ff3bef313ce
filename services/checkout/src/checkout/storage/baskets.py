"""Baskets: one row each, lines and customer as JSON read and replaced as a whole under the row's lock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg.types.json import Json
from sqlalchemy import bindparam, select, update

from checkout.domain.baskets import Basket, BasketState, Customer, Line
from checkout.storage.tables import baskets
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, driver_sql, is_postgres

_b = baskets

# The hot path's statements, built once: building a statement object and its cache key on every call costs more
# than running it.
_INSERT = _b.insert()
_FIND = select(_b).where(_b.c.basket_id == bindparam("k_basket_id"))
_FIND_LOCKED = _FIND.with_for_update()
_STORE = select(_b.c.store_id).where(_b.c.basket_id == bindparam("k_basket_id"))
_CHANGING = (
    "state",
    "lines",
    "next_line",
    "customer",
    "points_redeemed",
    "sale_id",
    "reserve_tried",
    "hold_tried",
    "revision",
    "expires_at",
    "updated_at",
)
_SAVE = (
    update(_b)
    .where(_b.c.basket_id == bindparam("k_basket_id"))
    .values({name: bindparam(f"v_{name}", type_=_b.c[name].type) for name in _CHANGING})
)
# PostgreSQL: the same two, run straight on the driver (storeplane_runtime.sql.driver_sql): a scan runs both.
_FIND_LOCKED_PG = (
    f"SELECT {', '.join(column.name for column in _b.c)} FROM baskets WHERE basket_id = %(k_basket_id)s FOR UPDATE"
)
_SAVE_PG = (
    f"UPDATE baskets SET {', '.join(f'{name} = %(v_{name})s' for name in _CHANGING)} WHERE basket_id = %(k_basket_id)s"
)
_JSON_COLUMNS = frozenset({"lines", "customer"})


def _line_json(line: Line) -> list[Any]:
    return [
        line.line_id,
        line.sku,
        line.barcode,
        line.name,
        line.quantity,
        line.unit_price,
        line.tax_class,
        line.tax_rate_ppm,
        line.reserved,
    ]


def _line_of(raw: list[Any]) -> Line:
    line_id, sku, barcode, name, quantity, unit_price, tax_class, rate, reserved = raw
    return Line(str(line_id), sku, barcode, name, int(quantity), int(unit_price), tax_class, int(rate), bool(reserved))


def _customer_json(customer: Customer | None) -> dict[str, Any] | None:
    if customer is None:
        return None
    return {
        "customer_id": customer.customer_id,
        "loyalty_card_number": customer.loyalty_card_number,
        "display_name": customer.display_name,
        "tier": customer.tier,
        "points_available": customer.points_available,
        "loyalty_unavailable": customer.loyalty_unavailable,
    }


def _customer_of(raw: Mapping[str, Any] | None) -> Customer | None:
    if not raw:
        return None
    return Customer(
        customer_id=raw["customer_id"],
        loyalty_card_number=raw.get("loyalty_card_number", ""),
        display_name=raw.get("display_name", ""),
        tier=raw.get("tier", ""),
        points_available=int(raw.get("points_available", 0)),
        loyalty_unavailable=bool(raw.get("loyalty_unavailable", False)),
    )


def _values(basket: Basket, now: datetime) -> dict[str, Any]:
    return {
        "state": basket.state.value,
        "lines": [_line_json(line) for line in basket.lines],
        "next_line": basket.next_line,
        "customer": _customer_json(basket.customer),
        "points_redeemed": basket.points_redeemed,
        "sale_id": basket.sale_id,
        "reserve_tried": basket.reserve_tried,
        "hold_tried": basket.hold_tried,
        "revision": basket.revision,
        "expires_at": basket.expires_at,
        "updated_at": now,
    }


def basket_of(row: Any) -> Basket:
    return Basket(
        basket_id=row.basket_id,
        store_id=row.store_id,
        terminal_id=row.terminal_id,
        cashier_id=row.cashier_id,
        currency=row.currency,
        tax_inclusive=bool(row.tax_inclusive),
        opened_at=as_utc(row.opened_at),
        expires_at=as_utc(row.expires_at),
        state=BasketState(row.state),
        lines=tuple(_line_of(raw) for raw in row.lines),
        next_line=int(row.next_line),
        customer=_customer_of(row.customer),
        points_redeemed=int(row.points_redeemed),
        sale_id=row.sale_id,
        reserve_tried=bool(row.reserve_tried),
        hold_tried=bool(row.hold_tried),
        revision=int(row.revision),
    )


def insert_basket(conn: Db, basket: Basket, now: datetime) -> None:
    conn.execute(
        _INSERT,
        {
            "basket_id": basket.basket_id,
            "store_id": basket.store_id,
            "terminal_id": basket.terminal_id,
            "cashier_id": basket.cashier_id,
            "currency": basket.currency,
            "tax_inclusive": basket.tax_inclusive,
            "opened_at": basket.opened_at,
            **_values(basket, now),
        },
    )


def find_basket(conn: Db, basket_id: str, *, lock: bool = False) -> Basket | None:
    """The basket; with `lock`, its row is this transaction's until it ends (PostgreSQL; SQLite has one writer)."""
    if lock and is_postgres(conn):
        row = driver_sql(conn, _FIND_LOCKED_PG, {"k_basket_id": basket_id}).fetchone()
    else:
        row = conn.execute(_FIND_LOCKED if lock else _FIND, {"k_basket_id": basket_id}).first()
    return basket_of(row) if row is not None else None


def basket_store(conn: Db, basket_id: str) -> str | None:
    store: str | None = conn.execute(_STORE, {"k_basket_id": basket_id}).scalar()
    return store


def save_basket(conn: Db, basket: Basket, now: datetime) -> None:
    values = _values(basket, now)
    if is_postgres(conn):
        params = {
            f"v_{name}": Json(values[name]) if name in _JSON_COLUMNS and values[name] is not None else values[name]
            for name in _CHANGING
        }
        driver_sql(conn, _SAVE_PG, {"k_basket_id": basket.basket_id, **params})
    else:
        conn.execute(_SAVE, {"k_basket_id": basket.basket_id, **{f"v_{name}": values[name] for name in _CHANGING}})


def claim_expired(conn: Db, now: datetime, limit: int) -> list[Basket]:
    """Up to `limit` open baskets past their expiry, locked; rows another transaction holds are skipped (replicas)."""
    query = (
        select(_b)
        .where(_b.c.state == BasketState.OPEN.value, _b.c.expires_at <= now)
        .order_by(_b.c.expires_at)
        .limit(limit)
    )
    if is_postgres(conn):
        query = query.with_for_update(skip_locked=True)
    return [basket_of(row) for row in conn.execute(query)]
