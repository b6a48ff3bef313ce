"""Booking points on a locked account: every ledger entry with its lot changes and the account row, together.

Used by every write that moves points (use_cases, sales); the caller holds the account's lock.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from loyalty import storage
from loyalty.domain import Account, Entry, EntryKind, LoyaltyPolicy, add_months, credit, debit
from loyalty.storage import hot
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.sql import Db, is_postgres


def book_credit(
    conn: Db,
    policy: LoyaltyPolicy,
    account: Account,
    kind: EntryKind,
    points: int,
    now: datetime,
    *,
    sale_id: str = "",
    return_id: str = "",
    store_id: str = "",
    reason: str = "",
    note: str = "",
) -> tuple[Account, Entry]:
    """A credit entry: debt is repaid first, the rest becomes a lot expiring `expiry_months` from now."""
    booked = credit(account.balance, points)
    expires_at = add_months(now, policy.expiry_months)
    entry = Entry(
        new_event_id(),
        account.account_id,
        kind,
        points,
        booked.balance_after,
        now,
        sale_id=sale_id,
        return_id=return_id,
        store_id=store_id,
        expires_at=expires_at,
        adjustment_reason=reason,
        note=note,
    )
    if is_postgres(conn):
        hot.append_entry(conn, entry, lot_points=booked.lot_points)
    else:
        storage.insert_entry(conn, entry)
        if booked.lot_points:
            storage.insert_lot(conn, account.account_id, entry.entry_id, booked.lot_points, expires_at)
    return replace(account, balance=booked.balance_after), entry


def book_debit(
    conn: Db,
    account: Account,
    kind: EntryKind,
    points: int,
    now: datetime,
    *,
    sale_id: str = "",
    return_id: str = "",
    store_id: str = "",
    reason: str = "",
    note: str = "",
) -> tuple[Account, Entry]:
    """A debit entry of `points` (positive): oldest lots first; what they do not cover leaves the balance negative
    (the callers that may not go negative check before)."""
    booked = debit(account.balance, storage.open_lots(conn, account.account_id), points)
    entry = Entry(
        new_event_id(),
        account.account_id,
        kind,
        -points,
        booked.balance_after,
        now,
        sale_id=sale_id,
        return_id=return_id,
        store_id=store_id,
        adjustment_reason=reason,
        note=note,
    )
    if is_postgres(conn):
        hot.append_entry(conn, entry)
    else:
        storage.insert_entry(conn, entry)
    storage.take_from_lots(conn, booked.taken)
    return replace(account, balance=booked.balance_after), entry


def book_expiry(conn: Db, account: Account, now: datetime) -> tuple[Account, list[Entry]]:
    """EXPIRE entries for what is left of the account's lots past their date, one per lot, oldest first."""
    written: list[Entry] = []
    balance = account.balance
    for lot in storage.claim_due_lots(conn, account.account_id, now):
        balance -= lot.remaining
        entry = Entry(new_event_id(), account.account_id, EntryKind.EXPIRE, -lot.remaining, balance, now)
        storage.insert_entry(conn, entry, lot_id=lot.lot_id)
        written.append(entry)
    return replace(account, balance=balance), written
