"""The points ledger and its expiry lots: credits and debits, FIFO consumption, debt, expiry dates.

Every credit (EARN, REFUND, positive ADJUST) is a lot that expires `expiry_months` after it was booked; debits
(REDEEM, CLAWBACK, negative ADJUST) consume lots oldest expiry first (then lowest lot id). A debit larger than what
the lots hold leaves the balance negative: that debt is not a lot; the next credits repay it first, and only what
is left of them becomes a lot. So at every moment: sum(lot remaining) = max(balance, 0), and an EXPIRE entry takes
exactly what is left of one lot past its date.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class EntryKind(Enum):
    EARN = "EARN"
    REDEEM = "REDEEM"
    CLAWBACK = "CLAWBACK"
    REFUND = "REFUND"
    ADJUST = "ADJUST"
    EXPIRE = "EXPIRE"


@dataclass(frozen=True)
class Lot:
    """Credited points not yet spent or expired."""

    lot_id: int
    remaining: int
    expires_at: datetime


@dataclass(frozen=True)
class Credit:
    """A credit of `points`: `repaid` of them pay back debt, `lot_points` (maybe 0) become a new lot."""

    points: int
    balance_after: int
    repaid: int
    lot_points: int


@dataclass(frozen=True)
class Debit:
    """A debit of `points` (positive number): `taken` = (lot id, points) from the lots, `shortfall` = debt added."""

    points: int
    balance_after: int
    taken: tuple[tuple[int, int], ...]
    shortfall: int


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` moved by whole calendar months; the day is clamped to the month's last (31 Jan + 1 = 28/29 Feb)."""
    total = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(total, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def credit(balance: int, points: int) -> Credit:
    """Book a credit: debt first, the rest as a lot."""
    if points <= 0:
        raise ValueError("a credit is positive")
    repaid = min(points, max(0, -balance))
    return Credit(points, balance + points, repaid, points - repaid)


def fifo_order(lots: Sequence[Lot]) -> list[Lot]:
    return sorted((lot for lot in lots if lot.remaining > 0), key=lambda lot: (lot.expires_at, lot.lot_id))


def debit(balance: int, lots: Sequence[Lot], points: int) -> Debit:
    """Book a debit of `points` (positive): oldest lots first, whatever they cannot cover becomes debt."""
    if points <= 0:
        raise ValueError("a debit is a positive number of points")
    left = points
    taken: list[tuple[int, int]] = []
    for lot in fifo_order(lots):
        if left == 0:
            break
        take = min(left, lot.remaining)
        taken.append((lot.lot_id, take))
        left -= take
    return Debit(points, balance - points, tuple(taken), left)


def due_lots(lots: Sequence[Lot], now: datetime) -> list[Lot]:
    """Lots whose expiry has come, with points left (what an EXPIRE entry takes)."""
    return [lot for lot in fifo_order(lots) if lot.expires_at <= now]


def expiring_soon(lots: Sequence[Lot], now: datetime, horizon_end: datetime) -> list[tuple[datetime, int]]:
    """(expiry, points) of the lots expiring after `now` and up to `horizon_end`, soonest first, one per date."""
    by_date: dict[datetime, int] = {}
    for lot in fifo_order(lots):
        if now < lot.expires_at <= horizon_end:
            by_date[lot.expires_at] = by_date.get(lot.expires_at, 0) + lot.remaining
    return sorted(by_date.items())


@dataclass(frozen=True)
class Entry:
    """One ledger entry as written: signed points and the balance after it."""

    entry_id: str
    account_id: str
    kind: EntryKind
    points: int
    balance_after: int
    occurred_at: datetime
    sale_id: str = ""
    return_id: str = ""
    store_id: str = ""
    expires_at: datetime | None = None
    adjustment_reason: str = ""
    note: str = ""
