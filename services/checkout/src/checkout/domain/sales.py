"""Sales and returns as recorded: a completed basket (or an offline sale) with its amounts, payment and receipt, and
the returns made against it. Plain Python."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from checkout.domain.pricing import LineAmounts, PricedLine, Pricing, line_amounts
from checkout.domain.refunds import LineRefund, ReturnPlan
from checkout.domain.tenders import PaidTender, Settlement, Tender
from storeplane_runtime.errors import NotFound, PreconditionFailed

MAX_NOTE_LENGTH = 500


class SaleNotFound(NotFound):
    reason = "SALE_NOT_FOUND"


class CurrencyMismatch(PreconditionFailed):
    """Goods go back only in a store of the sale's currency (the refund is paid in it)."""

    reason = "CURRENCY_MISMATCH"


class ReturnReason(enum.Enum):
    """Why goods came back (names match pos.checkout.v1.ReturnReason)."""

    DEFECTIVE = "DEFECTIVE"
    WRONG_ITEM = "WRONG_ITEM"
    CHANGED_MIND = "CHANGED_MIND"
    DAMAGED = "DAMAGED"
    OTHER = "OTHER"


@dataclass(frozen=True)
class SaleLine:
    """A line as sold: the scanned price, its share of the points redemption, and how much of it came back."""

    line_id: str
    sku: str
    barcode: str
    name: str
    quantity: int
    unit_price: int
    tax_class: str
    tax_rate_ppm: int
    discount: int
    points_allocated: int
    returned_quantity: int = 0

    def amounts(self, tax_inclusive: bool) -> LineAmounts:
        priced = PricedLine(self.sku, self.quantity, self.unit_price, self.tax_class, self.tax_rate_ppm)
        return line_amounts(
            priced, tax_inclusive=tax_inclusive, discount=self.discount, points_allocated=self.points_allocated
        )


@dataclass(frozen=True)
class Sale:
    """A completed sale. Amounts in minor units of `currency`; `tenders` with the part of each that paid the sale."""

    sale_id: str
    basket_id: str
    client_sale_id: str
    store_id: str
    terminal_id: str
    cashier_id: str
    customer_id: str
    currency: str
    tax_inclusive: bool
    lines: tuple[SaleLine, ...]
    tenders: tuple[PaidTender, ...]
    subtotal: int
    discount_total: int
    tax_total: int
    total: int
    points_redeemed: int
    cash_rounding: int
    amount_paid: int
    change_due: int
    cash_increment: int
    completed_at: datetime
    offline: bool
    receipt_number: str
    receipt_lines: tuple[str, ...] = ()
    return_ids: tuple[str, ...] = ()

    def line_amounts(self) -> tuple[LineAmounts, ...]:
        return tuple(line.amounts(self.tax_inclusive) for line in self.lines)

    def settlement(self) -> Settlement:
        return Settlement(
            currency=self.currency,
            total=self.total,
            cash_increment=self.cash_increment,
            tenders=self.tenders,
            cash_rounding=self.cash_rounding,
            amount_paid=self.amount_paid,
            change_due=self.change_due,
        )


def sale_of(
    *,
    sale_id: str,
    basket_id: str,
    client_sale_id: str,
    store_id: str,
    terminal_id: str,
    cashier_id: str,
    customer_id: str,
    lines: Sequence[tuple[str, str, str]],  # per priced line: line id, barcode, name
    pricing: Pricing,
    settlement: Settlement,
    completed_at: datetime,
    offline: bool,
    receipt_number: str,
) -> Sale:
    """The sale of a priced and settled basket (or offline sale); the receipt is added by `receipts.sale_receipt`."""
    sale_lines = tuple(
        SaleLine(
            line_id=line_id,
            sku=a.line.sku,
            barcode=barcode,
            name=name,
            quantity=a.line.quantity,
            unit_price=a.line.unit_price,
            tax_class=a.line.tax_class,
            tax_rate_ppm=a.line.tax_rate_ppm,
            discount=a.discount,
            points_allocated=a.points_allocated,
        )
        for (line_id, barcode, name), a in zip(lines, pricing.lines, strict=True)
    )
    return Sale(
        sale_id=sale_id,
        basket_id=basket_id,
        client_sale_id=client_sale_id,
        store_id=store_id,
        terminal_id=terminal_id,
        cashier_id=cashier_id,
        customer_id=customer_id,
        currency=pricing.currency,
        tax_inclusive=pricing.tax_inclusive,
        lines=sale_lines,
        tenders=settlement.tenders,
        subtotal=pricing.subtotal,
        discount_total=pricing.discount_total,
        tax_total=pricing.tax_total,
        total=pricing.total,
        points_redeemed=pricing.points_redeemed,
        cash_rounding=settlement.cash_rounding,
        amount_paid=settlement.amount_paid,
        change_due=settlement.change_due,
        cash_increment=settlement.cash_increment,
        completed_at=completed_at,
        offline=offline,
        receipt_number=receipt_number,
    )


def receipt_number(store_id: str, terminal_id: str, number: int) -> str:
    """`<store>-<terminal>-<n>`: gap-free per terminal (n from the terminal's counter, in the sale's transaction)."""
    return f"{store_id}-{terminal_id}-{number}"


@dataclass(frozen=True)
class ReturnedLine:
    """One returned sale line and what it gives back."""

    line_id: str
    sku: str
    name: str
    restock: bool
    refund: LineRefund


@dataclass(frozen=True)
class SaleReturn:
    """A return of goods from an earlier sale, and what went back to which tender."""

    return_id: str
    original_sale_id: str
    original_store_id: str
    store_id: str
    terminal_id: str
    cashier_id: str
    customer_id: str
    currency: str
    lines: tuple[ReturnedLine, ...]
    refund_tenders: tuple[Tender, ...]
    amount_refunded: int
    cash_rounding: int
    points_returned: int
    reason: ReturnReason
    note: str
    returned_at: datetime
    receipt_number: str
    receipt_lines: tuple[str, ...] = ()


def check_currency(sale: Sale, store_currency: str) -> None:
    if sale.currency != store_currency:
        raise CurrencyMismatch(
            f"sale {sale.sale_id} was paid in {sale.currency}; this store takes {store_currency}",
            metadata={"sale_currency": sale.currency, "store_currency": store_currency},
        )


def after_return(sale: Sale, returning: Sequence[int]) -> Sale:
    """The sale with the returned quantities of a return added (aligned with its lines)."""
    lines = tuple(
        replace(line, returned_quantity=line.returned_quantity + n)
        for line, n in zip(sale.lines, returning, strict=True)
    )
    return replace(sale, lines=lines)


def returned_lines(
    sale: Sale, plan: ReturnPlan, returning: Sequence[int], restock: Sequence[bool]
) -> tuple[ReturnedLine, ...]:
    """The lines a return names, in sale order, with their refunds."""
    return tuple(
        ReturnedLine(line.line_id, line.sku, line.name, restock[i], plan.lines[i])
        for i, line in enumerate(sale.lines)
        if returning[i]
    )
