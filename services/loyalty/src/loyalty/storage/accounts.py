"""Accounts and holds: the account row every balance or hold write locks first, and the hold state guards."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select, union, update

from loyalty.domain import Account, Hold, HoldState, Tier
from loyalty.storage import hot
from loyalty.storage.tables import ACCOUNT_TABLES, accounts, holds
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, insert_for, is_postgres

_a = accounts
_h = holds


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


def _hold(row: Any) -> Hold:
    return Hold(
        hold_id=row.hold_id,
        account_id=row.account_id,
        store_id=row.store_id,
        points=row.points,
        state=HoldState(row.state),
        expires_at=None if row.expires_at is None else as_utc(row.expires_at),
    )


def find_account(
    conn: Db, *, customer_id: str = "", card_number: str = "", account_id: str = "", lock: bool = False
) -> Account | None:
    """The account of a customer id, card number or account id (the first given); `lock`: FOR UPDATE."""
    if customer_id:
        where = _a.c.customer_id == customer_id
    elif card_number:
        where = _a.c.card_number == card_number
    elif account_id:
        where = _a.c.account_id == account_id
    else:
        return None
    query = select(_a).where(where)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else _account(row)


def find_accounts_of(conn: Db, customer_id: str, card_number: str) -> tuple[Account | None, Account | None]:
    """The accounts of a customer id and of a card (either may be empty), locked, in one statement."""
    if is_postgres(conn):
        found = hot.accounts_of(conn, customer_id, card_number)
    else:
        found = _find_accounts_of(conn, customer_id, card_number)
    by_customer = next((a for a in found if customer_id and a.customer_id == customer_id), None)
    by_card = next((a for a in found if card_number and a.card_number == card_number), None)
    return by_customer, by_card


def _find_accounts_of(conn: Db, customer_id: str, card_number: str) -> list[Account]:
    keys = []
    if customer_id:
        keys.append(_a.c.customer_id == customer_id)
    if card_number:
        keys.append(_a.c.card_number == card_number)
    if not keys:
        return []
    return [_account(row) for row in conn.execute(select(_a).where(or_(*keys)).with_for_update())]


def lock_accounts(conn: Db, account_ids: Sequence[str]) -> dict[str, Account]:
    """Lock these accounts in id order (the order every multi-account write uses) and return them by id."""
    found: dict[str, Account] = {}
    for account_id in sorted(set(account_ids)):
        account = find_account(conn, account_id=account_id, lock=True)
        if account is not None:
            found[account_id] = account
    return found


def insert_account(
    conn: Db, account_id: str, *, customer_id: str | None, card_number: str | None, registered: bool, now: datetime
) -> bool:
    """A new account with 0 points; False when a customer id or card it names has one already (nothing written)."""
    stmt = (
        insert_for(conn, _a)
        .values(
            account_id=account_id,
            customer_id=customer_id,
            card_number=card_number,
            balance=0,
            held_points=0,
            tier=Tier.BRONZE.name,
            registered=registered,
            anonymised=False,
            created_at=now,
            tier_checked_at=now,
            entry_count=0,
        )
        .on_conflict_do_nothing()
        .returning(_a.c.account_id)
    )
    return conn.execute(stmt).first() is not None


def update_account(conn: Db, account_id: str, **values: Any) -> None:
    if "tier" in values and isinstance(values["tier"], Tier):
        values["tier"] = values["tier"].name
    conn.execute(update(_a).where(_a.c.account_id == account_id).values(**values))


def add_held(conn: Db, account_id: str, delta: int) -> None:
    if delta:
        conn.execute(update(_a).where(_a.c.account_id == account_id).values(held_points=_a.c.held_points + delta))


def move_account_rows(conn: Db, keep: Account, gone: Account) -> None:
    """Move the lots, holds, booked sales and spend of `gone` to `keep` (both locked); held points follow. The
    ledger entries stay where they were written (append-only): the caller books the balance across."""
    for table in ACCOUNT_TABLES:
        conn.execute(update(table).where(table.c.account_id == gone.account_id).values(account_id=keep.account_id))
    update_account(conn, gone.account_id, held_points=0, card_number=None)
    add_held(conn, keep.account_id, gone.held_points)


def erased_subjects(since: datetime) -> Select[tuple[str]]:
    """The outbox subjects of accounts erased after `since`: customer ids and account ids (see events.subject_of)."""
    erased = _a.c.erased_at > since
    return union(  # type: ignore[return-value]
        select(_a.c.account_id).where(erased), select(_a.c.customer_id).where(erased, _a.c.customer_id.is_not(None))
    )


def accounts_to_recheck(conn: Db, checked_before: datetime, limit: int) -> list[str]:
    """Accounts above the entry tier whose tier was last worked out before `checked_before` (the daily sweep)."""
    query = (
        select(_a.c.account_id)
        .where(_a.c.tier != Tier.BRONZE.name, _a.c.tier_checked_at < checked_before)
        .order_by(_a.c.tier_checked_at)
        .limit(limit)
    )
    return list(conn.execute(query).scalars())


# --- holds ------------------------------------------------------------------------------------------------------


def find_hold(conn: Db, hold_id: str) -> Hold | None:
    row = conn.execute(select(_h).where(_h.c.hold_id == hold_id)).first()
    return None if row is None else _hold(row)


def hold_store(conn: Db, hold_id: str) -> str | None:
    """The store a hold belongs to (None: no such hold), for the ownership check."""
    store: str | None = conn.execute(select(_h.c.store_id).where(_h.c.hold_id == hold_id)).scalar()
    return store


def insert_hold(conn: Db, hold: Hold, now: datetime) -> bool:
    """A new hold row; False when one with that id appeared meanwhile (nothing written)."""
    stmt = (
        insert_for(conn, _h)
        .values(
            hold_id=hold.hold_id,
            account_id=hold.account_id,
            store_id=hold.store_id,
            points=hold.points,
            state=hold.state.value,
            expires_at=hold.expires_at,
            updated_at=now,
        )
        .on_conflict_do_nothing()
        .returning(_h.c.hold_id)
    )
    return conn.execute(stmt).first() is not None


def save_hold(conn: Db, hold: Hold, now: datetime) -> None:
    conn.execute(
        update(_h)
        .where(_h.c.hold_id == hold.hold_id)
        .values(points=hold.points, state=hold.state.value, expires_at=hold.expires_at, updated_at=now)
    )


def end_hold(conn: Db, hold_id: str, to: HoldState, now: datetime, *, due_by: datetime | None = None) -> Hold | None:
    """Move an ACTIVE hold (past `due_by`, when given) to `to`; returns it as it was when this call won, else None.
    The guard makes release, expiry, capture and erasure race safely: one of them gives the points back."""
    where = [_h.c.hold_id == hold_id, _h.c.state == HoldState.ACTIVE.value]
    if due_by is not None:
        where.append(_h.c.expires_at <= due_by)
    row = conn.execute(update(_h).where(*where).values(state=to.value, updated_at=now).returning(*_h.c)).first()
    return None if row is None else _hold(row)


def active_holds(conn: Db, account_id: str) -> list[Hold]:
    query = select(_h).where(_h.c.account_id == account_id, _h.c.state == HoldState.ACTIVE.value)
    return [_hold(row) for row in conn.execute(query)]


def due_holds(conn: Db, now: datetime, limit: int) -> list[Hold]:
    """Active holds past their TTL (read without locks: the caller locks their accounts, then ends them guarded)."""
    query = (
        select(_h)
        .where(_h.c.state == HoldState.ACTIVE.value, _h.c.expires_at <= now)
        .order_by(_h.c.expires_at)
        .limit(limit)
    )
    return [_hold(row) for row in conn.execute(query)]
