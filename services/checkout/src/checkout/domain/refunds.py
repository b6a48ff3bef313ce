"""Refunds of returned goods: what each returned line gives back in money, tax and points, and to which tenders.

Every amount is a difference of cumulative shares (everything returned so far, minus what was returned before), so
the returns of a sale, however split, give back exactly what was paid: each line's total_amount, tax and points, and
each tender what it paid (cash net of change, after cash rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from checkout.domain.pricing import LineAmounts
from checkout.domain.tenders import Settlement, Tender
from storeplane_runtime.errors import PreconditionFailed, Violations
from storeplane_runtime.money import round_half_away, round_to_increment, share_of


class ReturnExceedsSold(PreconditionFailed):
    """A line would be returned more often than it was sold, across all returns of the sale."""

    reason = "RETURN_EXCEEDS_SOLD"


@dataclass(frozen=True)
class LineRefund:
    """What returning `quantity` units of a sale line gives back: `refund_amount` in money (tax included, in both tax
    modes), the `tax` contained in it, and `points_returned` (the part that was paid with points)."""

    quantity: int
    refund_amount: int
    tax: int
    points_returned: int


@dataclass(frozen=True)
class ReturnPlan:
    """A return's refunds: one LineRefund per sale line (zeros for lines not returned), the money paid back per
    tender (non-cash first in the order paid, then cash), and the totals.

    amount_refunded = sum of the tender refunds = refund_due + cash_rounding, where refund_due is the sum of the line
    refunds and cash_rounding what rounding the cash part to the cash increment added or took."""

    lines: tuple[LineRefund, ...]
    tenders: tuple[Tender, ...]
    refund_due: int
    cash_rounding: int
    amount_refunded: int
    points_returned: int


def line_refund(line: LineAmounts, returned_before: int, quantity: int) -> LineRefund:
    """The refund of `quantity` more units of a line of which `returned_before` came back already.

    Money: the units' share of total_amount (line_total, plus its tax in tax-exclusive stores); points: their share
    of points_allocated; both rounded half away from zero, cumulatively (all units returned so far minus those
    returned before), so the last unit takes the rest. Tax: the line's tax in proportion to the money refunded so
    far, cumulatively too, so a refund never contains more tax than money and all of it comes back with the last unit.
    """
    sold = line.line.quantity
    upto = returned_before + quantity
    money_before = share_of(line.total_amount, returned_before, sold)
    money_after = share_of(line.total_amount, upto, sold)

    def tax_in(money: int) -> int:
        return round_half_away(line.tax * money, line.total_amount) if line.total_amount else 0

    return LineRefund(
        quantity,
        money_after - money_before,
        tax_in(money_after) - tax_in(money_before),
        share_of(line.points_allocated, upto, sold) - share_of(line.points_allocated, returned_before, sold),
    )


def refunded_per_tender(settlement: Settlement, refunded: int) -> tuple[int, ...]:
    """How much of each paid tender `refunded` (money refunded over all returns of the sale so far, before cash
    rounding) gives back: non-cash tenders first in the order paid, then cash, each at most what it paid. The cash
    part is rounded to the cash increment (halves up), so refunding everything gives back exactly amount_paid."""
    left = refunded
    parts = [0] * len(settlement.tenders)
    for i, paid in enumerate(settlement.tenders):
        if not paid.tender.is_cash:
            parts[i] = min(left, paid.applied)
            left -= parts[i]
    cash = round_to_increment(left, settlement.cash_increment)
    for i, paid in enumerate(settlement.tenders):
        if paid.tender.is_cash:
            parts[i] = min(cash, paid.applied)
            cash -= parts[i]
    return tuple(parts)


def plan_return(
    lines: Sequence[LineAmounts],
    settlement: Settlement,
    returned_before: Sequence[int],
    returning: Sequence[int],
) -> ReturnPlan:
    """The refunds of returning `returning[i]` units of each sale line `lines[i]`, after `returned_before[i]` came
    back in earlier returns (all three aligned with the sale's lines; 0 = not returned).

    ReturnExceedsSold when a line would come back more often than it was sold. The tenders of the sale
    (`settlement`, from `settle` on the sale's tenders) are refunded cumulatively, see `refunded_per_tender`.
    """
    if not len(lines) == len(returned_before) == len(returning):
        raise ValueError("lines, returned_before and returning must be aligned")
    if settlement.total != sum(line.total_amount for line in lines):
        raise ValueError("the settlement is not the one of these lines")
    v = Violations()
    over: dict[str, str] = {}
    for i, (line, before, now) in enumerate(zip(lines, returned_before, returning, strict=True)):
        if before < 0:
            v.add(f"lines[{i}].returned_quantity", "must not be negative")
        if now < 0:
            v.add(f"lines[{i}].quantity", "must not be negative")
        if before + now > line.line.quantity:
            over[f"line_{i}"] = f"sold={line.line.quantity},returned={before},returning={now}"
    v.raise_if_any("the return is invalid")
    if over:
        raise ReturnExceedsSold(f"lines returned more often than sold: {', '.join(over)}", metadata=over)
    refunds = []
    refunded_before = 0
    for line, before, now in zip(lines, returned_before, returning, strict=True):
        refunds.append(line_refund(line, before, now))
        refunded_before += share_of(line.total_amount, before, line.line.quantity)
    refund_due = sum(r.refund_amount for r in refunds)
    before_parts = refunded_per_tender(settlement, refunded_before)
    after_parts = refunded_per_tender(settlement, refunded_before + refund_due)
    noncash_first = sorted(range(len(settlement.tenders)), key=lambda i: settlement.tenders[i].tender.is_cash)
    tenders = []
    for i in noncash_first:
        amount = after_parts[i] - before_parts[i]
        if amount:
            paid = settlement.tenders[i].tender
            tenders.append(Tender(paid.kind, amount, settlement.currency, paid.reference))
    amount_refunded = sum(t.amount for t in tenders)
    return ReturnPlan(
        lines=tuple(refunds),
        tenders=tuple(tenders),
        refund_due=refund_due,
        cash_rounding=amount_refunded - refund_due,
        amount_refunded=amount_refunded,
        points_returned=sum(r.points_returned for r in refunds),
    )
