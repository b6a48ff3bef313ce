"""The ledger, its lots, the sales and returns loyalty booked, and the spend that decides tiers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update

from loyalty.domain import Entry, EntryKind, Lot, SaleLine
from loyalty.storage import hot
from loyalty.storage.tables import accounts, entries, lots, returns, sales, spend
from storeplane_runtime.clock import as_utc
from storeplane_runtime.sql import Db, insert_for, is_postgres

_e, _l, _s, _r, _sp = entries, lots, sales, returns, spend


def _entry(row: Any) -> Entry:
    return Entry(
        entry_id=row.entry_id,
        account_id=row.account_id,
        kind=EntryKind(row.kind),
        points=row.points,
        balance_after=row.balance_after,
        occurred_at=as_utc(row.occurred_at),
        sale_id=row.sale_id,
        return_id=row.return_id,
        store_id=row.store_id,
        expires_at=None if row.expires_at is None else as_utc(row.expires_at),
        adjustment_reason=row.adjustment_reason,
        note=row.note,
    )


def insert_entry(conn: Db, entry: Entry, *, lot_id: int | None = None) -> None:
    """Append an entry and set its account's balance to the entry's balance_after (the account is locked)."""
    seq = conn.execute(
        update(accounts)
        .where(accounts.c.account_id == entry.account_id)
        .values(balance=entry.balance_after, entry_count=accounts.c.entry_count + 1)
        .returning(accounts.c.entry_count)
    ).scalar_one()
    conn.execute(
        _e.insert().values(
            entry_id=entry.entry_id,
            account_id=entry.account_id,
            kind=entry.kind.value,
            points=entry.points,
            balance_after=entry.balance_after,
            sale_id=entry.sale_id,
            return_id=entry.return_id,
            store_id=entry.store_id,
            occurred_at=entry.occurred_at,
            expires_at=entry.expires_at,
            adjustment_reason=entry.adjustment_reason,
            note=entry.note,
            lot_id=lot_id,
            seq=seq,
        )
    )


def list_entries(
    conn: Db, account_id: str, kinds: Sequence[EntryKind], after: tuple[datetime, str] | None, limit: int
) -> list[Entry]:
    """Entries of an account, newest first (time, then entry id), after the cursor `after`."""
    query = select(_e).where(_e.c.account_id == account_id)
    if kinds:
        query = query.where(_e.c.kind.in_([k.value for k in kinds]))
    if after is not None:
        at, entry_id = after
        query = query.where(or_(_e.c.occurred_at < at, and_(_e.c.occurred_at == at, _e.c.entry_id < entry_id)))
    query = query.order_by(_e.c.occurred_at.desc(), _e.c.entry_id.desc()).limit(limit)
    return [_entry(row) for row in conn.execute(query)]


def entries_of(conn: Db, account_id: str) -> list[Entry]:
    """Every entry of an account, oldest first (tests and verification)."""
    query = select(_e).where(_e.c.account_id == account_id).order_by(_e.c.seq)
    return [_entry(row) for row in conn.execute(query)]


# --- lots -------------------------------------------------------------------------------------------------------


def open_lots(conn: Db, account_id: str) -> list[Lot]:
    """The account's lots with points left (the caller holds the account's lock)."""
    query = select(_l.c.lot_id, _l.c.remaining, _l.c.expires_at).where(
        _l.c.account_id == account_id, _l.c.remaining > 0
    )
    return [Lot(row.lot_id, row.remaining, as_utc(row.expires_at)) for row in conn.execute(query)]


def insert_lot(conn: Db, account_id: str, entry_id: str, points: int, expires_at: datetime) -> None:
    conn.execute(
        _l.insert().values(
            account_id=account_id, entry_id=entry_id, points=points, remaining=points, expires_at=expires_at
        )
    )


_TAKE = (
    update(_l)
    .where(_l.c.lot_id == bindparam("b_lot_id"))
    .values(remaining=_l.c.remaining - bindparam("b_take", type_=_l.c.remaining.type))
)


def take_from_lots(conn: Db, taken: Sequence[tuple[int, int]]) -> None:
    if taken:
        conn.execute(_TAKE, [{"b_lot_id": lot_id, "b_take": take} for lot_id, take in taken])


def due_lot_accounts(conn: Db, now: datetime, limit: int) -> list[str]:
    """Accounts with lots past their date and points left (read without locks; the caller locks the accounts)."""
    query = (
        select(_l.c.account_id, func.min(_l.c.expires_at).label("first"))
        .where(_l.c.remaining > 0, _l.c.expires_at <= now)
        .group_by(_l.c.account_id)
        .order_by("first")
        .limit(limit)
    )
    return [row.account_id for row in conn.execute(query)]


def claim_due_lots(conn: Db, account_id: str, now: datetime) -> list[Lot]:
    """The account's lots past their date, as they were, now set to 0 left. The caller holds the account's lock:
    a second sweeper waits for it and then finds nothing left, so no lot is expired twice."""
    query = select(_l.c.lot_id, _l.c.remaining, _l.c.expires_at).where(
        _l.c.account_id == account_id, _l.c.remaining > 0, _l.c.expires_at <= now
    )
    due = [Lot(row.lot_id, row.remaining, as_utc(row.expires_at)) for row in conn.execute(query)]
    if due:
        conn.execute(update(_l).where(_l.c.lot_id.in_([lot.lot_id for lot in due])).values(remaining=0))
    return sorted(due, key=lambda lot: (lot.expires_at, lot.lot_id))


# --- sales and returns ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookedSale:
    """A sale loyalty booked: whose, where, what it earned per line."""

    sale_id: str
    account_id: str
    store_id: str
    currency_code: str
    amount_paid: int
    points_earned: int
    completed_at: datetime
    lines: tuple[SaleLine, ...]


@dataclass(frozen=True)
class ReturnedGoods:
    """A return as loyalty keeps it (no customer data): lines are (line id, quantity, points returned)."""

    return_id: str
    sale_id: str
    store_id: str
    currency_code: str
    amount_refunded: int
    points_returned: int
    lines: tuple[tuple[str, int, int], ...]
    returned_at: datetime


def _sale(row: Any) -> BookedSale:
    return BookedSale(
        sale_id=row.sale_id,
        account_id=row.account_id,
        store_id=row.store_id,
        currency_code=row.currency_code,
        amount_paid=row.amount_paid,
        points_earned=row.points_earned,
        completed_at=as_utc(row.completed_at),
        lines=tuple(SaleLine(*line) for line in row.lines),
    )


def _lines_json(lines: Sequence[SaleLine]) -> list[list[Any]]:
    return [[x.line_id, x.quantity, x.points, x.returned, x.clawed_back] for x in lines]


def lock_sale_key(conn: Db, sale_id: str) -> None:
    """Serialise the booking of a sale with the returns of it (PostgreSQL: a transaction advisory lock on the sale
    id; SQLite serialises writers already), so a return is never left pending beside its booked sale."""
    if is_postgres(conn):
        hot.lock_sale_key(conn, sale_key(sale_id))


def sale_key(sale_id: str) -> str:
    """The advisory lock key of a sale (its booking and its returns take turns)."""
    return "loyalty-sale:" + sale_id


def find_sale(conn: Db, sale_id: str) -> BookedSale | None:
    row = conn.execute(select(_s).where(_s.c.sale_id == sale_id)).first()
    return None if row is None else _sale(row)


def insert_sale(conn: Db, sale: BookedSale) -> None:
    conn.execute(
        _s.insert().values(
            sale_id=sale.sale_id,
            account_id=sale.account_id,
            store_id=sale.store_id,
            currency_code=sale.currency_code,
            amount_paid=sale.amount_paid,
            points_earned=sale.points_earned,
            completed_at=sale.completed_at,
            lines=_lines_json(sale.lines),
        )
    )


def save_sale_lines(conn: Db, sale_id: str, lines: Sequence[SaleLine]) -> None:
    conn.execute(update(_s).where(_s.c.sale_id == sale_id).values(lines=_lines_json(lines)))


def _returned(row: Any) -> ReturnedGoods:
    return ReturnedGoods(
        return_id=row.return_id,
        sale_id=row.sale_id,
        store_id=row.store_id,
        currency_code=row.currency_code,
        amount_refunded=row.amount_refunded,
        points_returned=row.points_returned,
        lines=tuple((line_id, quantity, points) for line_id, quantity, points in row.lines),
        returned_at=as_utc(row.returned_at),
    )


def record_return(conn: Db, goods: ReturnedGoods, state: str) -> bool:
    """Remember a return by id; False when it was seen before (nothing written)."""
    stmt = (
        insert_for(conn, _r)
        .values(
            return_id=goods.return_id,
            sale_id=goods.sale_id,
            state=state,
            store_id=goods.store_id,
            currency_code=goods.currency_code,
            amount_refunded=goods.amount_refunded,
            points_returned=goods.points_returned,
            lines=[list(line) for line in goods.lines],
            returned_at=goods.returned_at,
        )
        .on_conflict_do_nothing()
        .returning(_r.c.return_id)
    )
    return conn.execute(stmt).first() is not None


def pending_returns(conn: Db, sale_id: str) -> list[ReturnedGoods]:
    """Returns that arrived before their sale, in the order they were made."""
    query = select(_r).where(_r.c.sale_id == sale_id, _r.c.state == "PENDING")
    found = [_returned(row) for row in conn.execute(query)]
    return sorted(found, key=lambda r: (r.returned_at, r.return_id))


def mark_returns_applied(conn: Db, return_ids: Sequence[str]) -> None:
    if return_ids:
        conn.execute(update(_r).where(_r.c.return_id.in_(list(return_ids))).values(state="APPLIED"))


# --- spend ------------------------------------------------------------------------------------------------------


def add_spend(
    conn: Db, account_id: str, reference_id: str, currency: str, amount_minor: int, counted_at: datetime
) -> None:
    stmt = (
        insert_for(conn, _sp)
        .values(
            account_id=account_id,
            reference_id=reference_id,
            currency_code=currency,
            amount_minor=amount_minor,
            counted_at=counted_at,
        )
        .on_conflict_do_nothing()
    )
    conn.execute(stmt)


def spend_since(conn: Db, account_id: str, since: datetime) -> dict[str, int]:
    """Money counted for the account after `since`, per currency."""
    if is_postgres(conn):
        return hot.spend_since(conn, account_id, since)
    query = (
        select(_sp.c.currency_code, func.sum(_sp.c.amount_minor))
        .where(_sp.c.account_id == account_id, _sp.c.counted_at > since)
        .group_by(_sp.c.currency_code)
    )
    return {currency: int(total) for currency, total in conn.execute(query)}


def spend_of_accounts(conn: Db, account_ids: Sequence[str], since: datetime) -> Mapping[str, dict[str, int]]:
    query = (
        select(_sp.c.account_id, _sp.c.currency_code, func.sum(_sp.c.amount_minor))
        .where(_sp.c.account_id.in_(list(account_ids)), _sp.c.counted_at > since)
        .group_by(_sp.c.account_id, _sp.c.currency_code)
    )
    found: dict[str, dict[str, int]] = {}
    for account_id, currency, total in conn.execute(query):
        found.setdefault(account_id, {})[currency] = int(total)
    return found
