"""Receipt text: lines of at most 42 characters (a till printer's width) for a sale and a return: store, lines, tax
breakdown, tenders, change, loyalty points. Plain Python."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from checkout.domain.pricing import tax_breakdown
from checkout.domain.sales import Sale, SaleReturn
from storeplane_runtime.stores import MINOR_UNITS, Store

WIDTH = 42


def money_text(amount: int, currency: str) -> str:
    """`amount` minor units as printed: 12.34, -0.05, 500 (JPY has no minor unit)."""
    places = MINOR_UNITS.get(currency, 2)
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(amount), 10**places)
    return f"{sign}{whole}.{part:0{places}d}" if places else f"{sign}{whole}"


def _row(left: str, right: str) -> str:
    """`left` and `right` on one line, right-aligned; `left` is shortened when both do not fit."""
    room = WIDTH - len(right) - 1
    if room < 1:
        return right[:WIDTH]
    if len(left) > room:
        left = left[: max(room - 1, 0)] + "~" if room > 1 else left[:room]
    return left + " " * (WIDTH - len(left) - len(right)) + right


def _centre(text: str) -> str:
    return text[:WIDTH].center(WIDTH).rstrip()


def _fit(lines: Iterable[str]) -> tuple[str, ...]:
    return tuple(line[:WIDTH] for line in lines)


def _local(moment: datetime, store: Store) -> str:
    return moment.astimezone(ZoneInfo(store.time_zone)).strftime("%Y-%m-%d %H:%M")


def _rate(ppm: int) -> str:
    whole, part = divmod(ppm, 10_000)
    return f"{whole}%" if not part else f"{whole}.{part:04d}".rstrip("0") + "%"


TENDER_NAMES = {"CASH": "Cash", "CARD": "Card", "GIFT_CARD": "Gift card", "VOUCHER": "Voucher", "MOBILE": "Mobile"}


def sale_receipt(sale: Sale, store: Store) -> tuple[str, ...]:
    """The printed receipt of a sale."""
    c = sale.currency
    out = [_centre(store.name), _centre(sale.receipt_number), _centre(_local(sale.completed_at, store)), "-" * WIDTH]
    amounts = sale.line_amounts()
    for line, a in zip(sale.lines, amounts, strict=True):
        if line.quantity == 1:
            out.append(_row(line.name, money_text(a.gross_amount, c)))
        else:
            out.append(_row(line.name, ""))
            out.append(_row(f"  {line.quantity} x {money_text(line.unit_price, c)}", money_text(a.gross_amount, c)))
        if a.discount:
            out.append(_row("  Points discount", money_text(-a.discount, c)))
    out.append("-" * WIDTH)
    out.append(_row("Subtotal", money_text(sale.subtotal, c)))
    if sale.discount_total:
        out.append(_row(f"Points ({sale.points_redeemed})", money_text(-sale.discount_total, c)))
    if not sale.tax_inclusive:
        out.append(_row("Tax", money_text(sale.tax_total, c)))
    out.append(_row(f"TOTAL {c}", money_text(sale.total, c)))
    if sale.cash_rounding:
        out.append(_row("Cash rounding", money_text(sale.cash_rounding, c)))
        out.append(_row("To pay", money_text(sale.amount_paid, c)))
    for paid in sale.tenders:
        out.append(
            _row(TENDER_NAMES.get(paid.tender.kind.value, paid.tender.kind.value), money_text(paid.tender.amount, c))
        )
    if sale.change_due:
        out.append(_row("Change", money_text(sale.change_due, c)))
    out.append("-" * WIDTH)
    out.append(_row("Tax rate", "net / tax / gross"))
    for entry in tax_breakdown(amounts):
        figures = f"{money_text(entry.net, c)} / {money_text(entry.tax, c)} / {money_text(entry.gross, c)}"
        out.append(_row(_rate(entry.rate_ppm), figures))
    if sale.points_redeemed:
        out.append(_row("Loyalty points redeemed", str(sale.points_redeemed)))
    if sale.customer_id:
        out.append("Loyalty points credited to your account")
    if sale.offline:
        out.append(_centre("Recorded offline"))
    out.append(_centre("Thank you"))
    return _fit(out)


def return_receipt(sale_return: SaleReturn, store: Store) -> tuple[str, ...]:
    """The printed slip of a return."""
    c = sale_return.currency
    out = [
        _centre(store.name),
        _centre("RETURN"),
        _centre(sale_return.receipt_number),
        _centre(_local(sale_return.returned_at, store)),
        "-" * WIDTH,
    ]
    for line in sale_return.lines:
        out.append(_row(f"{line.refund.quantity} x {line.name}", money_text(-line.refund.refund_amount, c)))
    out.append("-" * WIDTH)
    if sale_return.cash_rounding:
        out.append(_row("Cash rounding", money_text(-sale_return.cash_rounding, c)))
    out.append(_row(f"REFUND {c}", money_text(sale_return.amount_refunded, c)))
    for tender in sale_return.refund_tenders:
        out.append(_row(TENDER_NAMES.get(tender.kind.value, tender.kind.value), money_text(tender.amount, c)))
    if sale_return.points_returned:
        out.append(_row("Loyalty points returned", str(sale_return.points_returned)))
    return _fit(out)
