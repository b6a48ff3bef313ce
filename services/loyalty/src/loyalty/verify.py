"""The ledger's invariants, checked over the whole database at any time (`storeplane loyalty verify`, tests):
each account's balance is the sum of its entries and its last entry's balance_after; held points are the sum of
its active holds; its lots hold exactly max(balance, 0); no lot is below 0; no lot was expired twice."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from loyalty.domain import HoldState
from loyalty.storage.tables import accounts, entries, holds, lots
from storeplane_runtime.sql import Db


@dataclass
class Verification:
    """What a check found: how many accounts and entries it read, and every problem (empty: all is well)."""

    accounts: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(conn: Db) -> Verification:
    """Check every account (read in one transaction: run it on a REPEATABLE READ or idle database for an exact
    snapshot; SQLite reads are snapshots already)."""
    found = Verification()
    sums = {
        row.account_id: (int(row.total), int(row.n))
        for row in conn.execute(
            select(entries.c.account_id, func.sum(entries.c.points).label("total"), func.count().label("n")).group_by(
                entries.c.account_id
            )
        )
    }
    held = {
        row.account_id: int(row.total)
        for row in conn.execute(
            select(holds.c.account_id, func.sum(holds.c.points).label("total"))
            .where(holds.c.state == HoldState.ACTIVE.value)
            .group_by(holds.c.account_id)
        )
    }
    in_lots = {
        row.account_id: (int(row.total), int(row.low))
        for row in conn.execute(
            select(
                lots.c.account_id,
                func.sum(lots.c.remaining).label("total"),
                func.min(lots.c.remaining).label("low"),
            ).group_by(lots.c.account_id)
        )
    }
    last_entry = (
        select(entries.c.balance_after)
        .where(entries.c.account_id == accounts.c.account_id)
        .order_by(entries.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    for row in conn.execute(select(accounts.c.account_id, accounts.c.balance, accounts.c.held_points, last_entry)):
        found.accounts += 1
        account_id, balance, held_points, last = row
        total, count = sums.get(account_id, (0, 0))
        found.entries += count
        if balance != total:
            found.problems.append(f"account {account_id}: balance {balance} but its entries sum to {total}")
        if count and last != balance:
            found.problems.append(f"account {account_id}: balance {balance} but the last balance_after is {last}")
        if held_points != held.get(account_id, 0):
            found.problems.append(
                f"account {account_id}: held_points {held_points} but active holds sum to {held.get(account_id, 0)}"
            )
        lot_total, lowest = in_lots.get(account_id, (0, 0))
        if lot_total != max(0, balance):
            found.problems.append(f"account {account_id}: lots hold {lot_total} but the balance is {balance}")
        if lowest < 0:
            found.problems.append(f"account {account_id}: a lot below 0")
    expired_twice = conn.execute(
        select(func.count()).select_from(
            select(entries.c.lot_id)
            .where(entries.c.lot_id.is_not(None))
            .group_by(entries.c.lot_id)
            .having(func.count() > 1)
            .subquery()
        )
    ).scalar_one()
    if expired_twice:
        found.problems.append(f"{expired_twice} lots expired more than once")
    broken_chain = conn.execute(
        select(func.count())
        .select_from(
            entries.join(
                previous := entries.alias("previous"),
                (previous.c.account_id == entries.c.account_id) & (previous.c.seq == entries.c.seq - 1),
            )
        )
        .where(previous.c.balance_after + entries.c.points != entries.c.balance_after)
    ).scalar_one()
    if broken_chain:
        found.problems.append(f"{broken_chain} entries whose balance_after is not the previous one's plus their points")
    orphans = set(sums) - {row.account_id for row in conn.execute(select(accounts.c.account_id))}
    if orphans:
        found.problems.append(f"{len(orphans)} accounts have entries but no account row")
    return found
