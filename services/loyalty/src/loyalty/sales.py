"""Sales and returns from checkout's events: capture the hold and earn on a sale, claw back and refund on a return.

Exactly once however often an event comes (the inbox, and the sale and return ids), and in any order: a return
whose sale has not been booked is kept and applied when the sale arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from loyalty import events, storage
from loyalty.book import book_credit, book_debit
from loyalty.domain import (
    Account,
    EntryKind,
    Hold,
    HoldState,
    LoyaltyPolicy,
    SaleLine,
    add_months,
    allocate,
    clawback,
    points_earned,
    points_worth,
    tier_for,
)
from loyalty.storage import BookedSale, ReturnedGoods, hot
from loyalty.use_cases import resolve_account, retier
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.sql import Db, is_postgres


@dataclass(frozen=True)
class SoldLine:
    line_id: str
    quantity: int
    total_minor: int  # what the customer paid for the line in money: the weight of its share of the points


@dataclass(frozen=True)
class Sale:
    """What loyalty reads from SaleCompleted."""

    sale_id: str
    store_id: str
    customer_id: str
    card_number: str
    currency_code: str
    amount_paid: int
    points_redeemed: int
    hold_id: str
    completed_at: datetime
    lines: tuple[SoldLine, ...]


def book_sale(uow: UnitOfWork, policy: LoyaltyPolicy, sale: Sale, *, now: datetime) -> Account | None:
    """Capture the sale's hold (a REDEEM of exactly the points it used, even past the hold's TTL: the customer has
    the discount), earn on the money paid at the tier the account had before the sale, remember each line's
    share for clawback, count the spend, apply returns that came first, and work out the tier again."""
    if not sale.customer_id and not sale.card_number:
        return None  # anonymous: nothing to earn, and nothing can have been held
    conn = uow.connection
    postgres = is_postgres(conn)
    if postgres:
        booked_before = hot.lock_sale(conn, storage.sale_key(sale.sale_id), sale.sale_id)
    else:  # writers are serialised already
        booked_before = storage.find_sale(conn, sale.sale_id) is not None
    if booked_before:
        return None  # the same sale again under another event id
    account = resolve_account(conn, customer_id=sale.customer_id, card_number=sale.card_number, now=now)
    since = add_months(now, -policy.spend_window_months)
    spend = storage.spend_since(conn, account.account_id, since)
    account = retier(uow, policy, account, now, spend)  # the tier before this sale, as of now
    if sale.hold_id:
        _end_hold_for_capture(conn, sale.hold_id, account, sale.store_id, now)
        account = replace(account, held_points=_held(conn, account))
    if sale.points_redeemed > 0:
        account, entry = book_debit(
            conn, account, EntryKind.REDEEM, sale.points_redeemed, now, sale_id=sale.sale_id, store_id=sale.store_id
        )
        worth = points_worth(policy, sale.currency_code, sale.points_redeemed)
        uow.publish(
            events.points_redeemed(account, entry, sale.hold_id, worth, sale.currency_code),
            subject=events.subject_of(account),
            store_id=sale.store_id,
        )
    earning = points_earned(sale.amount_paid, sale.currency_code, account.tier, policy)
    if earning.points > 0:
        account, entry = book_credit(
            conn, policy, account, EntryKind.EARN, earning.points, now, sale_id=sale.sale_id, store_id=sale.store_id
        )
        uow.publish(
            events.points_earned(account, entry, earning, sale.amount_paid, sale.currency_code),
            subject=events.subject_of(account),
            store_id=sale.store_id,
        )
    shares = allocate(earning.points, [line.total_minor for line in sale.lines])
    booked = BookedSale(
        sale_id=sale.sale_id,
        account_id=account.account_id,
        store_id=sale.store_id,
        currency_code=sale.currency_code,
        amount_paid=sale.amount_paid,
        points_earned=earning.points,
        completed_at=sale.completed_at,
        lines=tuple(SaleLine(x.line_id, x.quantity, share) for x, share in zip(sale.lines, shares, strict=True)),
    )
    returns_waiting = True
    if postgres:
        returns_waiting = hot.book_sale(conn, booked)
    else:
        storage.insert_sale(conn, booked)
        storage.add_spend(
            conn, account.account_id, sale.sale_id, sale.currency_code, sale.amount_paid, sale.completed_at
        )
    if sale.completed_at > since:
        spend = {**spend, sale.currency_code: spend.get(sale.currency_code, 0) + sale.amount_paid}
    waiting = storage.pending_returns(conn, sale.sale_id) if returns_waiting else []
    for goods in waiting:
        account, booked = _apply_return(uow, policy, account, booked, goods, now)
        if sale.completed_at > since:
            spend = {**spend, sale.currency_code: spend.get(sale.currency_code, 0) - goods.amount_refunded}
    storage.mark_returns_applied(conn, [goods.return_id for goods in waiting])
    if tier_for(spend, policy) is not account.tier:
        account = retier(uow, policy, account, now, spend)
    return account


def _held(conn: Db, account: Account) -> int:
    found = storage.find_account(conn, account_id=account.account_id)
    return account.held_points if found is None else found.held_points


def _end_hold_for_capture(conn: Db, hold_id: str, account: Account, store_id: str, now: datetime) -> None:
    """The sale's hold becomes CAPTURED whatever state it was in; an active one gives its held points back (they
    are now redeemed). A hold never seen is recorded as captured, so a late HoldPoints cannot revive it."""
    hold = storage.find_hold(conn, hold_id)
    if hold is None:
        storage.insert_hold(conn, Hold(hold_id, account.account_id, store_id, 0, HoldState.CAPTURED, None), now)
        return
    if hold.state is HoldState.ACTIVE:
        if hold.account_id != account.account_id:
            storage.lock_accounts(conn, [hold.account_id])
        ended = storage.end_hold(conn, hold_id, HoldState.CAPTURED, now)
        if ended is not None:
            storage.add_held(conn, ended.account_id, -ended.points)
    elif hold.state is not HoldState.CAPTURED:
        storage.save_hold(conn, replace(hold, state=HoldState.CAPTURED), now)


# --- returns ----------------------------------------------------------------------------------------------------


def book_return(
    uow: UnitOfWork, policy: LoyaltyPolicy, goods: ReturnedGoods, *, customer_id: str, card_number: str, now: datetime
) -> Account | None:
    """SaleReturned: claw back what the returned units earned and refund the points they were paid with, once per
    return id. A return of a sale not booked yet is kept (state PENDING) and applied by `book_sale`."""
    if not customer_id and not card_number:
        return None  # an anonymous sale earned nothing and was paid with no points
    conn = uow.connection
    storage.lock_sale_key(conn, goods.sale_id)
    sale = storage.find_sale(conn, goods.sale_id)
    if sale is None:
        storage.record_return(conn, goods, "PENDING")
        return None
    [account] = storage.lock_accounts(conn, [sale.account_id]).values()
    if not storage.record_return(conn, goods, "APPLIED"):
        return None  # this return was booked before (under another event id)
    sale = storage.find_sale(conn, goods.sale_id)  # again, under the account's lock
    assert sale is not None
    account, _ = _apply_return(uow, policy, account, sale, goods, now)
    return retier(uow, policy, account, now)


def _apply_return(
    uow: UnitOfWork, policy: LoyaltyPolicy, account: Account, sale: BookedSale, goods: ReturnedGoods, now: datetime
) -> tuple[Account, BookedSale]:
    """CLAWBACK of what the returned units earned (may leave the balance negative: the points may have been
    spent), then REFUND of the points they were paid with as a new lot; the refunded money leaves the spend."""
    conn = uow.connection
    lines = {line.line_id: line for line in sale.lines}
    taken = 0
    for line_id, quantity, _points in goods.lines:
        line = lines.get(line_id)
        if line is None:
            continue  # a line loyalty never saw earned nothing here
        outcome = clawback(line, quantity)
        lines[line_id] = outcome.line
        taken += outcome.points
    common = {"sale_id": sale.sale_id, "return_id": goods.return_id, "store_id": goods.store_id}
    if taken:
        account, _ = book_debit(conn, account, EntryKind.CLAWBACK, taken, now, **common)
    if goods.points_returned > 0:
        account, _ = book_credit(conn, policy, account, EntryKind.REFUND, goods.points_returned, now, **common)
    after = replace(sale, lines=tuple(lines[line.line_id] for line in sale.lines))
    storage.save_sale_lines(conn, sale.sale_id, after.lines)
    if goods.amount_refunded:
        storage.add_spend(
            conn, account.account_id, goods.return_id, sale.currency_code, -goods.amount_refunded, sale.completed_at
        )
    return account, after


def returned_goods(
    *,
    return_id: str,
    sale_id: str,
    store_id: str,
    currency_code: str,
    amount_refunded: int,
    points_returned: int,
    lines: Sequence[tuple[str, int, int]],
    returned_at: datetime,
) -> ReturnedGoods:
    """A return as loyalty keeps it; the total points given back default to the sum of the lines'."""
    total = points_returned or sum(points for _, _, points in lines)
    return ReturnedGoods(return_id, sale_id, store_id, currency_code, amount_refunded, total, tuple(lines), returned_at)
