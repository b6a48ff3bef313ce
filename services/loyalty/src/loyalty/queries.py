"""Reads: an account as the API shows it (with its rolling spend and the points expiring soon), holds, the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from loyalty import storage
from loyalty.domain import Account, AccountNotFound, Entry, EntryKind, LoyaltyPolicy, add_months, expiring_soon
from loyalty.storage import hot
from storeplane_runtime.db import Database
from storeplane_runtime.sql import Db, is_postgres


@dataclass(frozen=True)
class AccountView:
    """An account with what is worked out for showing it."""

    account: Account
    spend: dict[str, int]
    expiring: list[tuple[datetime, int]]


def find_view(
    conn: Db,
    policy: LoyaltyPolicy,
    now: datetime,
    *,
    customer_id: str = "",
    card_number: str = "",
    account_id: str = "",
) -> AccountView | None:
    """The account of a customer id, card or account id (the first given) as the API shows it, as of `now`."""
    since = add_months(now, -policy.spend_window_months)
    if is_postgres(conn):  # one round trip
        rows = hot.account_view(
            conn,
            since=since,
            now=now,
            horizon=now + policy.expiring_soon,
            customer_id=customer_id,
            card_number=card_number,
            account_id=account_id,
        )
        return None if rows is None else AccountView(rows.account, rows.spend, rows.expiring)
    account = storage.find_account(conn, customer_id=customer_id, card_number=card_number, account_id=account_id)
    if account is None:
        return None
    spend = storage.spend_since(conn, account.account_id, since)
    lots = storage.open_lots(conn, account.account_id)
    return AccountView(account, spend, expiring_soon(lots, now, now + policy.expiring_soon))


def account_view(conn: Db, policy: LoyaltyPolicy, account: Account, now: datetime) -> AccountView:
    """An account (read again in the caller's transaction, which may have just changed it) as the API shows it."""
    view = find_view(conn, policy, now, account_id=account.account_id)
    assert view is not None, "the account was read in this transaction"
    return view


class LoyaltyQueries:
    """The reads of the API, each in a read-only connection of its own."""

    def __init__(self, database: Database, policy: LoyaltyPolicy) -> None:
        self.database = database
        self.policy = policy

    def account(self, *, customer_id: str = "", card_number: str = "", now: datetime) -> AccountView:
        with self.database.read_engine.connect() as conn:
            view = find_view(conn, self.policy, now, customer_id=customer_id, card_number=card_number)
        if view is None:
            raise AccountNotFound("no account for this customer id or card")
        return view

    def hold_store(self, hold_id: str) -> str | None:
        with self.database.read_engine.connect() as conn:
            return storage.hold_store(conn, hold_id)

    def entries(
        self, customer_id: str, kinds: Sequence[EntryKind], after: tuple[datetime, str] | None, limit: int
    ) -> list[Entry]:
        with self.database.read_engine.connect() as conn:
            account = storage.find_account(conn, customer_id=customer_id)
            if account is None:
                raise AccountNotFound(f"no account for customer {customer_id[:128]!r}")
            return storage.list_entries(conn, account.account_id, kinds, after, limit)
