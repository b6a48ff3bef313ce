"""Paying a sale: which tenders are accepted, cash rounding (CHF to 0.05) and change.

Non-cash tenders are charged exactly and never for more than is left due; cash pays whatever they leave, rounded to
the store's cash increment, and is the only tender that may exceed it (the excess is change).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from storeplane_runtime.errors import PreconditionFailed, PreconditionViolation, Violations
from storeplane_runtime.money import round_to_increment
from storeplane_runtime.stores import Store


class TenderExceedsDue(PreconditionFailed):
    """A non-cash tender is for more than is left due (only cash gives change)."""

    reason = "TENDER_EXCEEDS_DUE"


class TenderInsufficient(PreconditionFailed):
    """The tenders do not cover the amount due (after cash rounding)."""

    reason = "TENDER_INSUFFICIENT"


class TenderKind(enum.Enum):
    """Kind of payment (names match pos.checkout.v1.TenderType)."""

    CASH = "CASH"
    CARD = "CARD"
    GIFT_CARD = "GIFT_CARD"
    VOUCHER = "VOUCHER"
    MOBILE = "MOBILE"


@dataclass(frozen=True)
class Tender:
    """One payment offered, or one refund paid back: for cash the amount handed over, otherwise the amount charged.
    Positive minor units of `currency`."""

    kind: TenderKind
    amount: int
    currency: str
    reference: str = ""

    @property
    def is_cash(self) -> bool:
        return self.kind is TenderKind.CASH


@dataclass(frozen=True)
class PaidTender:
    """A tender of a completed sale and the part of it that paid the sale (`applied`: cash net of change)."""

    tender: Tender
    applied: int


@dataclass(frozen=True)
class Settlement:
    """How a sale was paid, in minor units of `currency`.

    cash_rounding = amount actually due - total (negative when rounded down, zero without cash);
    amount_paid = total + cash_rounding = sum of the applied tenders; change_due = cash handed over - cash applied.
    """

    currency: str
    total: int
    cash_increment: int
    tenders: tuple[PaidTender, ...]
    cash_rounding: int
    amount_paid: int
    change_due: int


def check_tenders(store: Store, tenders: Sequence[Tender]) -> None:
    """InvalidInput naming every tender that is not a positive amount in the store's currency."""
    v = Violations()
    for i, tender in enumerate(tenders):
        if tender.amount <= 0:
            v.add(f"tenders[{i}].amount.amount_minor", "must be positive")
        if tender.currency != store.currency:
            v.add(f"tenders[{i}].amount.currency_code", f"must be {store.currency}")
    v.raise_if_any("the tenders are invalid")


def settle(store: Store, total: int, tenders: Sequence[Tender]) -> Settlement:
    """Checks the tenders against the amount due and works out cash rounding and change.

    Non-cash tenders are taken in the order given, each at most what is left due (TenderExceedsDue). Cash, wherever
    it appears, pays what they leave: that part is rounded to the store's cash increment (halves up) and the
    difference recorded in `cash_rounding`; cash above it is change. Without cash the non-cash tenders must cover
    the total exactly; short is TenderInsufficient. A zero total needs no tender.
    """
    if total < 0:
        raise ValueError("the amount due must not be negative")
    check_tenders(store, tenders)
    left = total
    for i, tender in enumerate(tenders):
        if tender.is_cash:
            continue
        if tender.amount > left:
            raise TenderExceedsDue(
                f"tender {i} ({tender.kind.value}) is for {tender.amount}, only {left} is left due",
                metadata={"tender_index": str(i), "amount": str(tender.amount), "left_due": str(left)},
                preconditions=[
                    PreconditionViolation("TENDER", f"tenders[{i}]", f"amount {tender.amount}, left due {left}")
                ],
            )
        left -= tender.amount
    handed = sum(t.amount for t in tenders if t.is_cash)
    cash_due = round_to_increment(left, store.cash_rounding_minor) if handed else left
    if handed < cash_due:
        due, short = total - left + cash_due, cash_due - handed
        raise TenderInsufficient(
            f"the tenders leave {short} unpaid",
            metadata={"amount_due": str(due), "short": str(short)},
            preconditions=[PreconditionViolation("TENDER", store.currency, f"due {due}, short {short}")],
        )
    paid = []
    cash_left = cash_due
    for tender in tenders:
        if tender.is_cash:
            applied = min(tender.amount, cash_left)
            cash_left -= applied
        else:
            applied = tender.amount
        paid.append(PaidTender(tender, applied))
    rounding = cash_due - left
    return Settlement(
        currency=store.currency,
        total=total,
        cash_increment=store.cash_rounding_minor,
        tenders=tuple(paid),
        cash_rounding=rounding,
        amount_paid=total + rounding,
        change_due=handed - cash_due,
    )
