"""PostgreSQL statements of the hot paths (GetAccount, HoldPoints, earning), each one round trip run straight on
the driver (`storeplane_runtime.sql.driver_sql`): SQLAlchemy's execution context around every statement cost more
than the round trip. SQLite runs the portable statements of the other storage modules instead."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loyalty.domain import Account, Entry, Hold, HoldState, Tier
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, driver_sql

if TYPE_CHECKING:
    from loyalty.storage.ledger import BookedSale

_ACCOUNT_COLUMNS = (
    "a.account_id, a.customer_id, a.card_number, a.balance, a.held_points, a.tier, a.anonymised, a.created_at"
)

# The account and what showing it needs: its spend in the window per currency, and its lots expiring soon.
_VIEW = (
    "SELECT {columns},"
    " ARRAY(SELECT s.currency_code FROM spend s WHERE s.account_id = a.account_id AND s.counted_at > %(since)s"
    "       GROUP BY s.currency_code ORDER BY s.currency_code) AS spend_currencies,"
    " ARRAY(SELECT sum(s.amount_minor)::bigint FROM spend s"
    "       WHERE s.account_id = a.account_id AND s.counted_at > %(since)s"
    "       GROUP BY s.currency_code ORDER BY s.currency_code) AS spend_totals,"
    " ARRAY(SELECT l.expires_at FROM lots l WHERE l.account_id = a.account_id AND l.remaining > 0"
    "       AND l.expires_at > %(now)s AND l.expires_at <= %(horizon)s ORDER BY l.expires_at, l.lot_id) AS lot_dates,"
    " ARRAY(SELECT l.remaining FROM lots l WHERE l.account_id = a.account_id AND l.remaining > 0"
    "       AND l.expires_at > %(now)s AND l.expires_at <= %(horizon)s ORDER BY l.expires_at, l.lot_id) AS lot_points"
    " FROM accounts a WHERE {where}"
)
VIEW_BY_CUSTOMER = _VIEW.format(columns=_ACCOUNT_COLUMNS, where="a.customer_id = %(key)s")
VIEW_BY_CARD = _VIEW.format(columns=_ACCOUNT_COLUMNS, where="a.card_number = %(key)s")
VIEW_BY_ID = _VIEW.format(columns=_ACCOUNT_COLUMNS, where="a.account_id = %(key)s")

# HoldPoints' reads: the customer's account, locked; then, in a statement of its own (so that it sees what the
# account's previous lock holder committed), the hold as it is and what showing the account needs.
_LOCK = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.customer_id = %(customer_id)s FOR UPDATE"
_HOLD_AND_VIEW = _VIEW.format(
    columns="h.account_id AS h_account_id, h.store_id AS h_store_id, h.points AS h_points, h.state AS h_state,"
    " h.expires_at AS h_expires_at",
    where="a.account_id = %(key)s",
).replace("FROM accounts a WHERE", "FROM accounts a LEFT JOIN holds h ON h.hold_id = %(hold_id)s WHERE")
# HoldPoints' write: the hold saved (made, or changed if it is still the one read) and the held points moved.
_SAVE_HOLD = (
    "WITH saved AS ("
    " INSERT INTO holds (hold_id, account_id, store_id, points, state, expires_at, updated_at)"
    " VALUES (%(hold_id)s, %(account_id)s, %(store_id)s, %(points)s, %(state)s, %(expires_at)s, %(now)s)"
    " ON CONFLICT (hold_id) DO UPDATE SET points = excluded.points, state = excluded.state,"
    " expires_at = excluded.expires_at, updated_at = excluded.updated_at"
    " WHERE %(existed)s AND holds.account_id = excluded.account_id"
    " RETURNING 1)"
    " UPDATE accounts SET held_points = held_points + %(delta)s"
    " WHERE account_id = %(account_id)s AND EXISTS (SELECT 1 FROM saved)"
    " RETURNING held_points"
)


@dataclass(frozen=True)
class AccountRows:
    """An account with its spend per currency and (expiry, points) of its lots expiring soon."""

    account: Account
    spend: dict[str, int]
    expiring: list[tuple[datetime, int]]


def _account(row: Any) -> Account:
    return Account(
        account_id=row.account_id,
        customer_id=row.customer_id,
        card_number=row.card_number,
        balance=row.balance,
        held_points=row.held_points,
        tier=Tier[row.tier],
        anonymised=row.anonymised,
        created_at=as_utc(row.created_at),
    )


def account_view(
    conn: Db,
    *,
    since: datetime,
    now: datetime,
    horizon: datetime,
    customer_id: str = "",
    card_number: str = "",
    account_id: str = "",
) -> AccountRows | None:
    """The account of a customer id, card or account id (the first given) with what showing it needs."""
    sql = VIEW_BY_CUSTOMER if customer_id else VIEW_BY_CARD if card_number else VIEW_BY_ID
    params = {"key": customer_id or card_number or account_id, "since": since, "now": now, "horizon": horizon}
    row = driver_sql(conn, sql, params).fetchone()
    if row is None:
        return None
    return AccountRows(_account(row), _spend(row), _expiring(row))


def _expiring(row: Any) -> list[tuple[datetime, int]]:
    by_date: dict[datetime, int] = {}
    for at, points in zip(row.lot_dates, row.lot_points, strict=True):
        moment = as_utc(at)
        by_date[moment] = by_date.get(moment, 0) + int(points)
    return sorted(by_date.items())


def _spend(row: Any) -> dict[str, int]:
    return {c: int(t) for c, t in zip(row.spend_currencies, row.spend_totals, strict=True)}


@dataclass(frozen=True)
class LockedForHold:
    """The customer's account (locked), the hold as it is, and the account's spend and lots expiring soon."""

    account: Account
    hold: Hold | None
    spend: dict[str, int]
    expiring: list[tuple[datetime, int]]


def lock_for_hold(
    conn: Db, customer_id: str, hold_id: str, *, since: datetime, now: datetime, horizon: datetime
) -> LockedForHold | None:
    """Lock the customer's account, then read the hold and the account's view; None: no account yet."""
    locked = driver_sql(conn, _LOCK, {"customer_id": customer_id}).fetchone()
    if locked is None:
        return None
    params = {"key": locked.account_id, "hold_id": hold_id, "since": since, "now": now, "horizon": horizon}
    row = driver_sql(conn, _HOLD_AND_VIEW, params).fetchone()
    hold = None
    if row.h_account_id is not None:
        expires_at = None if row.h_expires_at is None else as_utc(row.h_expires_at)
        hold = Hold(hold_id, row.h_account_id, row.h_store_id, row.h_points, HoldState(row.h_state), expires_at)
    return LockedForHold(_account(locked), hold, _spend(row), _expiring(row))


def save_hold(conn: Db, hold: Hold, *, existed: bool, delta: int, now: datetime) -> bool:
    """Write the hold and move the account's held points by `delta` in one statement; False when the hold row was
    made by someone else meanwhile (nothing written: plan again)."""
    params = {
        "hold_id": hold.hold_id,
        "account_id": hold.account_id,
        "store_id": hold.store_id,
        "points": hold.points,
        "state": hold.state.value,
        "expires_at": hold.expires_at,
        "now": now,
        "existed": existed,
        "delta": delta,
    }
    return driver_sql(conn, _SAVE_HOLD, params).fetchone() is not None


# An entry appended: the account's balance and entry count move, the entry takes the next seq, and a credit's lot
# (if it makes one) is written, in one statement.
_APPEND = (
    "WITH moved AS (UPDATE accounts SET balance = %(balance_after)s, entry_count = entry_count + 1"
    "               WHERE account_id = %(account_id)s RETURNING entry_count),"
    " entry AS (INSERT INTO ledger_entries (entry_id, account_id, kind, points, balance_after, sale_id, return_id,"
    "           store_id, occurred_at, expires_at, adjustment_reason, note, lot_id, seq)"
    "           SELECT %(entry_id)s, %(account_id)s, %(kind)s, %(points)s, %(balance_after)s, %(sale_id)s,"
    "           %(return_id)s, %(store_id)s, %(occurred_at)s, %(expires_at)s, %(adjustment_reason)s, %(note)s,"
    "           %(lot_id)s, entry_count FROM moved RETURNING 1)"
    " INSERT INTO lots (account_id, entry_id, points, remaining, expires_at)"
    " SELECT %(account_id)s, %(entry_id)s, %(lot_points)s, %(lot_points)s, %(expires_at)s"
    " FROM entry WHERE %(lot_points)s > 0"
)


def append_entry(conn: Db, entry: Entry, *, lot_id: int | None = None, lot_points: int = 0) -> None:
    """Append `entry` (its account locked by the caller) and, when `lot_points` > 0, the lot it credits."""
    params = {
        "entry_id": entry.entry_id,
        "account_id": entry.account_id,
        "kind": entry.kind.value,
        "points": entry.points,
        "balance_after": entry.balance_after,
        "sale_id": entry.sale_id,
        "return_id": entry.return_id,
        "store_id": entry.store_id,
        "occurred_at": entry.occurred_at,
        "expires_at": entry.expires_at,
        "adjustment_reason": entry.adjustment_reason,
        "note": entry.note,
        "lot_id": lot_id,
        "lot_points": lot_points,
    }
    driver_sql(conn, _APPEND, params)


# The sale's key lock and whether it was booked. The check's snapshot may predate the lock when another consumer
# booked the same sale meanwhile: then the sales row's primary key refuses the second booking (the event is retried
# and finds it booked).
_LOCK_SALE_STATE = (
    "SELECT pg_advisory_xact_lock(hashtext(%(key)s)) AS locked,"
    " EXISTS (SELECT 1 FROM sales WHERE sale_id = %(sale_id)s) AS booked"
)
# The booked sale and its spend; and (a statement that starts after the key lock: it sees every return recorded
# before) whether returns of it are waiting.
_BOOK_SALE = (
    "WITH sale AS (INSERT INTO sales (sale_id, account_id, store_id, currency_code, amount_paid, points_earned,"
    "              completed_at, lines)"
    "              VALUES (%(sale_id)s, %(account_id)s, %(store_id)s, %(currency_code)s, %(amount_paid)s,"
    "              %(points_earned)s, %(completed_at)s, CAST(%(lines)s AS json)) RETURNING 1),"
    " spent AS (INSERT INTO spend (account_id, reference_id, currency_code, amount_minor, counted_at)"
    "           SELECT %(account_id)s, %(sale_id)s, %(currency_code)s, %(amount_paid)s, %(completed_at)s FROM sale"
    "           ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM sale_returns WHERE sale_id = %(sale_id)s AND state = 'PENDING')"
    " AS returns_waiting"
)


def lock_sale(conn: Db, key: str, sale_id: str) -> bool:
    """Take the sale's key lock; True when the sale was booked already."""
    return bool(driver_sql(conn, _LOCK_SALE_STATE, {"key": key, "sale_id": sale_id}).fetchone().booked)


def book_sale(conn: Db, sale: BookedSale) -> bool:
    """The booked sale and its spend, in one statement; True when returns of the sale are waiting."""
    params = {
        "sale_id": sale.sale_id,
        "account_id": sale.account_id,
        "store_id": sale.store_id,
        "currency_code": sale.currency_code,
        "amount_paid": sale.amount_paid,
        "points_earned": sale.points_earned,
        "completed_at": sale.completed_at,
        "lines": json.dumps([[x.line_id, x.quantity, x.points, x.returned, x.clawed_back] for x in sale.lines]),
    }
    return bool(driver_sql(conn, _BOOK_SALE, params).fetchone().returns_waiting)


_ACCOUNTS_OF = (
    "SELECT a.account_id, a.customer_id, a.card_number, a.balance, a.held_points, a.tier, a.anonymised, a.created_at"
    " FROM accounts a WHERE a.customer_id = %(customer_id)s OR a.card_number = %(card_number)s FOR UPDATE"
)
_SPEND_SINCE = (
    "SELECT currency_code, sum(amount_minor)::bigint AS total FROM spend"
    " WHERE account_id = %(account_id)s AND counted_at > %(since)s GROUP BY currency_code"
)
_LOCK_SALE = "SELECT pg_advisory_xact_lock(hashtext(%(key)s))"


def accounts_of(conn: Db, customer_id: str, card_number: str) -> list[Account]:
    """The accounts of a customer id and of a card (empty ones match nothing), locked."""
    params = {"customer_id": customer_id or None, "card_number": card_number or None}
    return [_account(row) for row in driver_sql(conn, _ACCOUNTS_OF, params)]


def spend_since(conn: Db, account_id: str, since: datetime) -> dict[str, int]:
    rows = driver_sql(conn, _SPEND_SINCE, {"account_id": account_id, "since": since})
    return {row.currency_code: int(row.total) for row in rows}


def lock_sale_key(conn: Db, key: str) -> None:
    driver_sql(conn, _LOCK_SALE, {"key": key})
