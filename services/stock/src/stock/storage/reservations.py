"""Reservations: the row every Reserve locks first, the state guard that gives units back once, expiry claims."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, bindparam, delete, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stock.domain import Level, Reservation, ReservationState, ReservedLine
from stock.storage.levels import WRITE_PG_SQL, level_arrays, lock_levels_of_items, write_levels
from stock.storage.tables import reservations
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, driver_sql, is_postgres

_r = reservations
ACTIVE = ReservationState.ACTIVE.value


def _lock_statement(insert: Any) -> Any:
    # Insert a placeholder or "update" the existing row to itself: either way the row is ours until commit.
    stmt = insert(_r).values(
        reservation_id=bindparam("reservation_id"),
        store_id=bindparam("store_id"),
        state="NEW",
        lines=bindparam("no_lines", type_=JSON),
        expires_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[_r.c.reservation_id], set_={"reservation_id": stmt.excluded.reservation_id}
    )
    return stmt.returning(*_r.c)


# PostgreSQL: any number of reservation rows in one statement, locked in reservation id order.
_LOCK_PG = (
    "INSERT INTO reservations (reservation_id, store_id, state, lines, expires_at, updated_at)"
    " SELECT r.reservation_id, r.store_id, 'NEW', CAST('[]' AS json), %(now)b, %(now)b"
    " FROM unnest(CAST(%(ids)b AS text[]), CAST(%(stores)b AS text[])) AS r(reservation_id, store_id)"
    " ORDER BY r.reservation_id"
    " ON CONFLICT (reservation_id) DO UPDATE SET reservation_id = excluded.reservation_id"
    " RETURNING reservation_id, store_id, state, lines, expires_at, updated_at"
)
_LOCK_SQLITE = _lock_statement(sqlite_insert)
# A consumer batch's reservations, locked in reservation id order (as `_LOCK_PG`), creating none.
_LOCK_EXISTING_PG = (
    "SELECT reservation_id, store_id, state, lines, expires_at FROM reservations"
    " WHERE reservation_id = ANY(CAST(%(ids)b AS text[])) ORDER BY reservation_id FOR UPDATE"
)
_SAVE = (
    update(_r)
    .where(_r.c.reservation_id == bindparam("b_reservation_id"))
    .values(
        store_id=bindparam("b_store_id"),
        state=bindparam("b_state"),
        lines=bindparam("b_lines", type_=JSON),
        expires_at=bindparam("b_expires_at"),
        updated_at=bindparam("b_now"),
    )
)
# Reserve's write on PostgreSQL, in one statement: the level rows changed, the reservations, and the placeholders of
# new reservations whose Reserve failed (see `lock_reservations`) gone.
_SAVE_WITH_LEVELS_PG = (
    f"WITH moved AS ({WRITE_PG_SQL} RETURNING 1),"
    " dropped AS (DELETE FROM reservations"
    "             WHERE reservation_id = ANY(CAST(%(dropped)b AS text[])) AND state = 'NEW' RETURNING 1)"
    " UPDATE reservations AS r SET store_id = v.store_id, state = v.state, lines = CAST(v.lines AS json),"
    " expires_at = v.expires_at, updated_at = %(b_now)b"
    " FROM unnest(CAST(%(r_ids)b AS text[]), CAST(%(r_stores)b AS text[]), CAST(%(r_states)b AS text[]),"
    "             CAST(%(r_lines)b AS text[]), CAST(%(r_expires_at)b AS timestamptz[]))"
    "      AS v(reservation_id, store_id, state, lines, expires_at)"
    " WHERE r.reservation_id = v.reservation_id"
)
_DROP_PLACEHOLDERS = delete(_r).where(_r.c.reservation_id.in_(bindparam("ids", expanding=True)), _r.c.state == "NEW")
_FIND = select(_r).where(_r.c.reservation_id == bindparam("reservation_id"))
_END = (
    update(_r)
    .where(_r.c.reservation_id == bindparam("b_reservation_id"), _r.c.state == ACTIVE)
    .values(state=bindparam("b_to"), updated_at=bindparam("b_now"))
    .returning(*_r.c)
)
_DUE = (
    select(_r.c.reservation_id)
    .where(_r.c.state == ACTIVE, _r.c.expires_at <= bindparam("now"))
    .order_by(_r.c.expires_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_EXPIRE = (
    update(_r)
    .where(
        _r.c.reservation_id.in_(bindparam("ids", expanding=True)),
        _r.c.state == ACTIVE,
        _r.c.expires_at <= bindparam("b_now"),
    )
    .values(state=ReservationState.EXPIRED.value, updated_at=bindparam("b_now"))
    .returning(*_r.c)
)


def _reservation(row: Any, state: ReservationState | None = None) -> Reservation:
    return Reservation(
        reservation_id=row.reservation_id,
        store_id=row.store_id,
        state=state or ReservationState(row.state),
        lines=tuple(ReservedLine(sku, requested, held) for sku, requested, held in row.lines),
        expires_at=as_utc(row.expires_at),
    )


def lock_reservations(conn: Db, keys: Sequence[tuple[str, str]], now: datetime) -> dict[str, Reservation | None]:
    """Lock the rows of these (reservation id, store) keys in id order, creating a placeholder where there is none,
    and return them by id (None: new). A placeholder left by a Reserve that changed nothing must be dropped
    (`save_reservations`).

    Locking first serialises concurrent Reserves of one reservation: each plans from what the previous committed.
    """
    if not keys:
        return {}
    ordered = sorted(set(keys))
    if is_postgres(conn):
        params: dict[str, Any] = {"ids": [k[0] for k in ordered], "stores": [k[1] for k in ordered], "now": now}
        rows = driver_sql(conn, _LOCK_PG, params).fetchall()
    else:
        rows = [
            conn.execute(_LOCK_SQLITE, {"reservation_id": rid, "store_id": store, "no_lines": [], "now": now}).one()
            for rid, store in ordered
        ]
    return {row.reservation_id: None if row.state == "NEW" else _reservation(row) for row in rows}


def lock_for_batch(conn: Db, reservation_ids: Collection[str], level_keys: Collection[tuple[str, str]]) -> None:
    """Lock, for the rest of the transaction, the existing reservation rows of these ids (in id order), then the
    level rows of these (store, SKU) keys and of what those reservations hold (in key order): the order every
    Reserve takes its locks in, so that a consumer applying many events in one transaction cannot deadlock with
    Reserves. SQLite: nothing to do (the writer holds the database lock)."""
    if not is_postgres(conn):
        return
    keys = set(level_keys)
    if reservation_ids:
        rows = driver_sql(conn, _LOCK_EXISTING_PG, {"ids": sorted(set(reservation_ids))}).fetchall()
        keys.update((row.store_id, sku) for row in rows if row.state == ACTIVE for sku, _, _ in row.lines)
    if keys:
        lock_levels_of_items(conn, keys)


def save_reservations(
    conn: Db, reservations: Sequence[Reservation], now: datetime, levels: Sequence[Level], dropped: Sequence[str]
) -> None:
    """Store the reservations and the level rows (locked by the caller) they moved; drop the placeholders of the
    `dropped` reservation ids (new ones whose Reserve failed)."""
    if is_postgres(conn):
        if reservations or levels or dropped:
            params: dict[str, Any] = {
                **level_arrays(levels),
                "dropped": list(dropped),
                "r_ids": [r.reservation_id for r in reservations],
                "r_stores": [r.store_id for r in reservations],
                "r_states": [r.state.value for r in reservations],
                "r_lines": [json.dumps([[x.sku, x.requested, x.reserved] for x in r.lines]) for r in reservations],
                "r_expires_at": [r.expires_at for r in reservations],
                "b_now": now,
            }
            driver_sql(conn, _SAVE_WITH_LEVELS_PG, params)
        return
    write_levels(conn, levels)
    for reservation in reservations:
        conn.execute(
            _SAVE,
            {
                "b_reservation_id": reservation.reservation_id,
                "b_store_id": reservation.store_id,
                "b_state": reservation.state.value,
                "b_lines": [[line.sku, line.requested, line.reserved] for line in reservation.lines],
                "b_expires_at": reservation.expires_at,
                "b_now": now,
            },
        )
    if dropped:
        conn.execute(_DROP_PLACEHOLDERS, {"ids": list(dropped)})


def find_reservation(conn: Db, reservation_id: str) -> Reservation | None:
    row = conn.execute(_FIND, {"reservation_id": reservation_id}).first()
    return None if row is None or row.state == "NEW" else _reservation(row)


def end_reservation(conn: Db, reservation_id: str, to: ReservationState, now: datetime) -> Reservation | None:
    """Move an ACTIVE reservation to `to`; returns it as it was if this call won, None if it was not active.

    The state guard makes Release, expiry, BasketVoided and the sale race safely: one of them gives units back.
    """
    row = conn.execute(_END, {"b_reservation_id": reservation_id, "b_to": to.value, "b_now": now}).first()
    return None if row is None else _reservation(row, ReservationState.ACTIVE)


def claim_expired(conn: Db, now: datetime, limit: int) -> list[Reservation]:
    """Up to `limit` active reservations past their time, moved to EXPIRED (returned as they were: active).

    SKIP LOCKED: a reservation being changed right now is left for the next sweep.
    """
    ids = [row.reservation_id for row in conn.execute(_DUE, {"now": now, "limit": limit})]
    if not ids:
        return []
    rows = conn.execute(_EXPIRE, {"ids": ids, "b_now": now}).all()
    claimed = [_reservation(row, ReservationState.ACTIVE) for row in rows]
    return sorted(claimed, key=lambda r: (r.store_id, r.reservation_id))
