"""Tables of the stock service and the queries on them. Writers lock level rows in (store, sku) order, always after
the one reservation row they touch, so concurrent reservations, sales and imports cannot deadlock each other."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    bindparam,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from stock.domain import (
    ChangeReason,
    Item,
    Level,
    LevelChange,
    Reservation,
    ReservationState,
    ReservedLine,
)
from storeplane_runtime.outbox import NAMING

metadata = MetaData(naming_convention=NAMING)
_Id = BigInteger().with_variant(Integer(), "sqlite")

items = Table(
    "items",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("tax_class", String(32), nullable=False),
    Column("barcodes", JSON, nullable=False),  # list, as imported; item_barcodes is the lookup
    Column("prices", JSON, nullable=False),  # {"EUR": 1299, ...} in minor units
    Column("reorder_point", BigInteger, nullable=True),
    Column("revision", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

item_barcodes = Table(
    "item_barcodes",
    metadata,
    Column("barcode", String(64), primary_key=True),
    Column("sku", String(64), nullable=False, index=True),
)

stock_levels = Table(
    "stock_levels",
    metadata,
    Column("store_id", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("store_id", "sku"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("reservation_id", String(128), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    # [[sku, requested, reserved], ...]: always read and replaced as a whole (Reserve is declarative).
    Column("lines", JSON, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_reservations_active_expiry", reservations.c.state, reservations.c.expires_at)

stock_adjustments = Table(
    "stock_adjustments",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("store_id", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("caller", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Facts stock accepted although they looked wrong: stock going below zero, sales of SKUs it does not know.
stock_discrepancies = Table(
    "stock_discrepancies",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("store_id", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # NEGATIVE_ON_HAND, UNKNOWN_SKU
    Column("quantity", BigInteger, nullable=False),
    Column("on_hand_after", BigInteger, nullable=False),
    Column("reference_id", String(128), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

# Sales and returns already applied, by their own id: a replay under a new event id changes nothing either.
applied_documents = Table(
    "applied_documents",
    metadata,
    Column("kind", String(16), nullable=False),
    Column("document_id", String(128), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("kind", "document_id"),
)


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def insert_for(conn: Connection | Session, table: Table) -> Any:
    """An INSERT that understands ON CONFLICT on both databases."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    return (pg_insert if bind.dialect.name == "postgresql" else sqlite_insert)(table)


# --- items --------------------------------------------------------------------------------------------------


def _item(row: Any) -> Item:
    return Item(
        sku=row.sku,
        name=row.name,
        tax_class=row.tax_class,
        barcodes=tuple(row.barcodes),
        prices=dict(row.prices),
        reorder_point=row.reorder_point,
        revision=row.revision,
        updated_at=utc(row.updated_at),
    )


def find_item(conn: Connection | Session, *, sku: str = "", barcode: str = "") -> Item | None:
    if barcode:
        query = select(items).join(item_barcodes, item_barcodes.c.sku == items.c.sku)
        query = query.where(item_barcodes.c.barcode == barcode)
    else:
        query = select(items).where(items.c.sku == sku)
    row = conn.execute(query).first()
    return None if row is None else _item(row)


def find_items(conn: Connection | Session, skus: Collection[str]) -> dict[str, Item]:
    if not skus:
        return {}
    return {row.sku: _item(row) for row in conn.execute(select(items).where(items.c.sku.in_(list(skus))))}


def known_skus(conn: Connection | Session, skus: Collection[str]) -> dict[str, int | None]:
    """SKU -> reorder point of those SKUs that are items."""
    if not skus:
        return {}
    rows = conn.execute(select(items.c.sku, items.c.reorder_point).where(items.c.sku.in_(list(skus))))
    return {row.sku: row.reorder_point for row in rows}


def barcode_owners(conn: Connection | Session, barcodes: Collection[str]) -> dict[str, str]:
    if not barcodes:
        return {}
    rows = conn.execute(select(item_barcodes).where(item_barcodes.c.barcode.in_(list(barcodes))))
    return {row.barcode: row.sku for row in rows}


def save_items(session: Session, created: Sequence[Item], updated: Sequence[Item]) -> None:
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
        session.execute(items.insert(), [values(i) for i in created])
    if updated:
        session.execute(item_barcodes.delete().where(item_barcodes.c.sku.in_([i.sku for i in updated])))
        session.execute(
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
            ),
            [{**values(i), "b_sku": i.sku} for i in updated],
        )
    links = [{"barcode": b, "sku": i.sku} for i in (*created, *updated) for b in i.barcodes]
    if links:
        session.execute(item_barcodes.insert(), links)


# --- levels -------------------------------------------------------------------------------------------------


def _level(row: Any) -> Level:
    return Level(row.store_id, row.sku, row.on_hand, row.reserved, utc(row.updated_at))


def read_levels(conn: Connection | Session, store_id: str, skus: Collection[str]) -> dict[str, Level]:
    if not skus:
        return {}
    rows = conn.execute(
        select(stock_levels).where(stock_levels.c.store_id == store_id, stock_levels.c.sku.in_(list(skus)))
    )
    return {row.sku: _level(row) for row in rows}


def lock_levels(session: Session, store_id: str, skus: Collection[str]) -> dict[str, Level]:
    """The existing level rows of these SKUs, locked in SKU order until the transaction ends."""
    if not skus:
        return {}
    rows = session.execute(
        select(stock_levels)
        .where(stock_levels.c.store_id == store_id, stock_levels.c.sku.in_(sorted(skus)))
        .order_by(stock_levels.c.sku)
        .with_for_update()
    )
    return {row.sku: _level(row) for row in rows}


def lock_level_keys(session: Session, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], Level]:
    """Existing level rows for (store, sku) keys, locked in key order (imports)."""
    if not keys:
        return {}
    rows = session.execute(
        select(stock_levels)
        .where(tuple_(stock_levels.c.store_id, stock_levels.c.sku).in_(sorted(keys)))
        .order_by(stock_levels.c.store_id, stock_levels.c.sku)
        .with_for_update()
    )
    return {(row.store_id, row.sku): _level(row) for row in rows}


def create_levels(session: Session, keys: Iterable[tuple[str, str]], now: datetime) -> None:
    """Zero rows for levels that do not exist yet (a concurrent creator wins quietly)."""
    rows = [
        {"store_id": store, "sku": sku, "on_hand": 0, "reserved": 0, "updated_at": now} for store, sku in sorted(keys)
    ]
    if rows:
        session.execute(insert_for(session, stock_levels).on_conflict_do_nothing(), rows)


def write_levels(session: Session, levels: Sequence[Level]) -> None:
    """Store new quantities of level rows the caller has locked."""
    if not levels:
        return
    session.execute(
        update(stock_levels)
        .where(stock_levels.c.store_id == bindparam("b_store"), stock_levels.c.sku == bindparam("b_sku"))
        .values(on_hand=bindparam("b_on_hand"), reserved=bindparam("b_reserved"), updated_at=bindparam("b_at")),
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


def insert_levels(session: Session, levels: Sequence[Level]) -> None:
    if levels:
        session.execute(
            stock_levels.insert(),
            [
                {
                    "store_id": lv.store_id,
                    "sku": lv.sku,
                    "on_hand": lv.on_hand,
                    "reserved": lv.reserved,
                    "updated_at": lv.updated_at,
                }
                for lv in levels
            ],
        )


def move_levels(
    session: Session,
    store_id: str,
    moves: Mapping[str, tuple[int, int]],
    *,
    reason: ChangeReason | Mapping[str, ChangeReason],
    reference_id: str,
    now: datetime,
    adjustment_reason: str = "",
) -> list[LevelChange]:
    """Apply (on_hand delta, reserved delta) per SKU, creating missing level rows; returns the changes.

    `reason` is one for all, or one per SKU."""
    moves = {sku: m for sku, m in moves.items() if m != (0, 0)}
    locked = lock_levels(session, store_id, moves)
    missing = [sku for sku in moves if sku not in locked]
    if missing:
        create_levels(session, ((store_id, sku) for sku in missing), now)
        locked.update(lock_levels(session, store_id, missing))
    changes = []
    for sku in sorted(moves):
        before = locked[sku]
        on_hand_delta, reserved_delta = moves[sku]
        why = reason if isinstance(reason, ChangeReason) else reason[sku]
        after = before.moved(on_hand_delta, reserved_delta, now)
        changes.append(LevelChange(before, after, why, reference_id, adjustment_reason))
    write_levels(session, [c.after for c in changes])
    return changes


# --- reservations -------------------------------------------------------------------------------------------


def _reservation(row: Any) -> Reservation:
    return Reservation(
        reservation_id=row.reservation_id,
        store_id=row.store_id,
        state=ReservationState(row.state),
        lines=tuple(ReservedLine(sku, requested, held) for sku, requested, held in row.lines),
        expires_at=utc(row.expires_at),
    )


def lock_reservation(session: Session, reservation_id: str, store_id: str, now: datetime) -> Reservation | None:
    """Lock the reservation row (creating a released placeholder if there is none) and return it; None when new.

    Locking first serialises concurrent Reserves of one reservation: each plans from what the previous committed.
    """
    stmt = insert_for(session, reservations).values(
        reservation_id=reservation_id,
        store_id=store_id,
        state="NEW",
        lines=[],
        expires_at=now,
        updated_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[reservations.c.reservation_id], set_={"reservation_id": stmt.excluded.reservation_id}
    ).returning(*reservations.c)
    row = session.execute(stmt).one()
    return None if row.state == "NEW" else _reservation(row)


def save_reservation(session: Session, reservation: Reservation, now: datetime) -> None:
    session.execute(
        update(reservations)
        .where(reservations.c.reservation_id == reservation.reservation_id)
        .values(
            store_id=reservation.store_id,
            state=reservation.state.value,
            lines=[[line.sku, line.requested, line.reserved] for line in reservation.lines],
            expires_at=reservation.expires_at,
            updated_at=now,
        )
    )


def find_reservation(conn: Connection | Session, reservation_id: str) -> Reservation | None:
    row = conn.execute(select(reservations).where(reservations.c.reservation_id == reservation_id)).first()
    return None if row is None or row.state == "NEW" else _reservation(row)


def end_reservation(session: Session, reservation_id: str, to: ReservationState, now: datetime) -> Reservation | None:
    """Move an ACTIVE reservation to `to`; returns it as it was if this call won, None if it was not active.

    The state guard makes Release, expiry, BasketVoided and the sale race safely: one of them gives units back.
    """
    row = session.execute(
        update(reservations)
        .where(reservations.c.reservation_id == reservation_id, reservations.c.state == ReservationState.ACTIVE.value)
        .values(state=to.value, updated_at=now)
        .returning(*reservations.c)
    ).first()
    if row is None:
        return None
    active = _reservation(row)
    return Reservation(active.reservation_id, active.store_id, ReservationState.ACTIVE, active.lines, active.expires_at)


def claim_expired(session: Session, now: datetime, limit: int) -> list[Reservation]:
    """Up to `limit` active reservations past their time, moved to EXPIRED (returned as they were: active).

    SKIP LOCKED: a reservation being changed right now is left for the next sweep.
    """
    ids = [
        row.reservation_id
        for row in session.execute(
            select(reservations.c.reservation_id)
            .where(reservations.c.state == ReservationState.ACTIVE.value, reservations.c.expires_at <= now)
            .order_by(reservations.c.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ]
    if not ids:
        return []
    rows = session.execute(
        update(reservations)
        .where(
            reservations.c.reservation_id.in_(ids),
            reservations.c.state == ReservationState.ACTIVE.value,
            reservations.c.expires_at <= now,
        )
        .values(state=ReservationState.EXPIRED.value, updated_at=now)
        .returning(*reservations.c)
    ).all()
    claimed = []
    for row in rows:
        r = _reservation(row)
        claimed.append(Reservation(r.reservation_id, r.store_id, ReservationState.ACTIVE, r.lines, r.expires_at))
    return sorted(claimed, key=lambda r: (r.store_id, r.reservation_id))


# --- audit --------------------------------------------------------------------------------------------------


def record_adjustment(
    session: Session, change: LevelChange, *, reason: str, note: str, request_id: str, caller: str, now: datetime
) -> None:
    session.execute(
        stock_adjustments.insert().values(
            store_id=change.after.store_id,
            sku=change.after.sku,
            delta=change.on_hand_delta,
            reason=reason,
            note=note,
            request_id=request_id,
            caller=caller,
            created_at=now,
        )
    )


def record_discrepancies(session: Session, rows: Sequence[tuple[str, LevelChange, int]], now: datetime) -> None:
    """(kind, change, quantity) of facts accepted although they looked wrong."""
    if rows:
        session.execute(
            stock_discrepancies.insert(),
            [
                {
                    "store_id": c.after.store_id,
                    "sku": c.after.sku,
                    "kind": kind,
                    "quantity": quantity,
                    "on_hand_after": c.after.on_hand,
                    "reference_id": c.reference_id,
                    "recorded_at": now,
                }
                for kind, c, quantity in rows
            ],
        )


def first_application(session: Session, kind: str, document_id: str, now: datetime) -> bool:
    """Record that a sale/return was applied; False if it had been already."""
    row = session.execute(
        insert_for(session, applied_documents)
        .values(kind=kind, document_id=document_id, applied_at=now)
        .on_conflict_do_nothing()
        .returning(applied_documents.c.kind)
    ).first()
    return row is not None
