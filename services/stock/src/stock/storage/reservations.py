"""Reservations: the row every Reserve locks first, the state guard that gives units back once, expiry claims."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, bindparam, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stock.domain import Level, Reservation, ReservationState, ReservedLine
from stock.storage.levels import WRITE_PG_SQL, level_arrays, write_levels
from stock.storage.tables import Db, driver_sql, is_postgres, reservations, utc

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


_LOCK_PG = (
    "INSERT INTO reservations (reservation_id, store_id, state, lines, expires_at, updated_at)"
    " VALUES (%(reservation_id)s, %(store_id)s, 'NEW', CAST('[]' AS json), %(now)s, %(now)s)"
    " ON CONFLICT (reservation_id) DO UPDATE SET reservation_id = excluded.reservation_id"
    " RETURNING reservation_id, store_id, state, lines, expires_at, updated_at"
)
_LOCK_SQLITE = _lock_statement(sqlite_insert)
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
# Reserve's write on PostgreSQL: the level rows it changed and the reservation, in one statement.
_SAVE_WITH_LEVELS_PG = (
    f"WITH moved AS ({WRITE_PG_SQL} RETURNING 1)"
    " UPDATE reservations SET store_id = %(b_store_id)b, state = %(b_state)b, lines = CAST(%(b_lines)b AS json),"
    " expires_at = %(b_expires_at)b, updated_at = %(b_now)b WHERE reservation_id = %(b_reservation_id)b"
)
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
        expires_at=utc(row.expires_at),
    )


def lock_reservation(conn: Db, reservation_id: str, store_id: str, now: datetime) -> Reservation | None:
    """Lock the reservation row (creating a released placeholder if there is none) and return it; None when new.

    Locking first serialises concurrent Reserves of one reservation: each plans from what the previous committed.
    """
    if is_postgres(conn):
        params: dict[str, Any] = {"reservation_id": reservation_id, "store_id": store_id, "now": now}
        row = driver_sql(conn, _LOCK_PG, params).fetchone()
    else:
        params = {"reservation_id": reservation_id, "store_id": store_id, "no_lines": [], "now": now}
        row = conn.execute(_LOCK_SQLITE, params).one()
    return None if row.state == "NEW" else _reservation(row)


def save_reservation(conn: Db, reservation: Reservation, now: datetime, levels: Sequence[Level] = ()) -> None:
    """Store the reservation, and the level rows (locked by the caller) its change moved."""
    params = {
        "b_reservation_id": reservation.reservation_id,
        "b_store_id": reservation.store_id,
        "b_state": reservation.state.value,
        "b_lines": [[line.sku, line.requested, line.reserved] for line in reservation.lines],
        "b_expires_at": reservation.expires_at,
        "b_now": now,
    }
    if levels and is_postgres(conn):
        driver_sql(
            conn, _SAVE_WITH_LEVELS_PG, {**params, "b_lines": json.dumps(params["b_lines"]), **level_arrays(levels)}
        )
        return
    write_levels(conn, levels)
    conn.execute(_SAVE, params)


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
