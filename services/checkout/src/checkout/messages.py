"""Response messages built from domain values: baskets with their amounts, sales, returns."""

from __future__ import annotations

from checkout.domain.baskets import Basket, Customer
from checkout.domain.pricing import Pricing, tax_breakdown
from checkout.domain.sales import Sale, SaleReturn
from checkout.domain.tenders import Tender, TenderKind
from pos.checkout.v1 import checkout_pb2
from pos.common.v1 import common_pb2
from storeplane_runtime.timestamps import to_timestamp

TIERS = {
    "BRONZE": checkout_pb2.CUSTOMER_TIER_BRONZE,
    "SILVER": checkout_pb2.CUSTOMER_TIER_SILVER,
    "GOLD": checkout_pb2.CUSTOMER_TIER_GOLD,
}


def money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code=currency)


def tender_type(kind: TenderKind) -> int:
    value: int = checkout_pb2.TenderType.Value(f"TENDER_TYPE_{kind.value}")
    return value


def tender_message(tender: Tender) -> checkout_pb2.Tender:
    return checkout_pb2.Tender(
        type=tender_type(tender.kind), amount=money(tender.amount, tender.currency), reference=tender.reference
    )


def customer_message(customer: Customer) -> checkout_pb2.BasketCustomer:
    return checkout_pb2.BasketCustomer(
        customer_id=customer.customer_id,
        loyalty_card_number=customer.loyalty_card_number,
        display_name=customer.display_name,
        tier=TIERS.get(customer.tier, checkout_pb2.CUSTOMER_TIER_UNSPECIFIED),
        points_available=customer.points_available,
        loyalty_unavailable=customer.loyalty_unavailable,
    )


def basket_message(basket: Basket, pricing: Pricing) -> checkout_pb2.Basket:
    c = basket.currency
    message = checkout_pb2.Basket(
        basket_id=basket.basket_id,
        store_id=basket.store_id,
        terminal_id=basket.terminal_id,
        cashier_id=basket.cashier_id,
        state=checkout_pb2.BasketState.Value(f"BASKET_STATE_{basket.state.value}"),
        points_redeemed=pricing.points_redeemed,
        redemption_discount=money(pricing.redemption_discount, c),
        subtotal=money(pricing.subtotal, c),
        discount_total=money(pricing.discount_total, c),
        tax_total=money(pricing.tax_total, c),
        total=money(pricing.total, c),
        currency_code=c,
        tax_inclusive=basket.tax_inclusive,
        opened_at=to_timestamp(basket.opened_at),
        expires_at=to_timestamp(basket.expires_at),
        sale_id=basket.sale_id,
    )
    for line, a in zip(basket.lines, pricing.lines, strict=True):
        message.lines.append(
            checkout_pb2.BasketLine(
                line_id=line.line_id,
                sku=line.sku,
                barcode=line.barcode,
                name=line.name,
                quantity=line.quantity,
                unit_price=money(line.unit_price, c),
                tax_class=line.tax_class,
                tax_rate_ppm=line.tax_rate_ppm,
                gross_amount=money(a.gross_amount, c),
                discount=money(a.discount, c),
                line_total=money(a.line_total, c),
                tax=money(a.tax, c),
                reserved=line.reserved,
            )
        )
    if basket.customer is not None:
        message.customer.CopyFrom(customer_message(basket.customer))
    return message


def sale_message(sale: Sale, *, loyalty_card_number: str = "") -> checkout_pb2.Sale:
    c = sale.currency
    message = checkout_pb2.Sale(
        sale_id=sale.sale_id,
        basket_id=sale.basket_id,
        client_sale_id=sale.client_sale_id,
        store_id=sale.store_id,
        terminal_id=sale.terminal_id,
        cashier_id=sale.cashier_id,
        customer_id=sale.customer_id,
        loyalty_card_number=loyalty_card_number,
        tenders=[tender_message(p.tender) for p in sale.tenders],
        currency_code=c,
        tax_inclusive=sale.tax_inclusive,
        subtotal=money(sale.subtotal, c),
        discount_total=money(sale.discount_total, c),
        tax_total=money(sale.tax_total, c),
        total=money(sale.total, c),
        points_redeemed=sale.points_redeemed,
        cash_rounding=money(sale.cash_rounding, c),
        amount_paid=money(sale.amount_paid, c),
        change_due=money(sale.change_due, c),
        completed_at=to_timestamp(sale.completed_at),
        offline=sale.offline,
        receipt=checkout_pb2.Receipt(receipt_number=sale.receipt_number, lines=sale.receipt_lines),
        return_ids=sale.return_ids,
    )
    amounts = sale.line_amounts()
    for line, a in zip(sale.lines, amounts, strict=True):
        message.lines.append(
            checkout_pb2.SaleLine(
                line_id=line.line_id,
                sku=line.sku,
                barcode=line.barcode,
                name=line.name,
                quantity=line.quantity,
                unit_price=money(line.unit_price, c),
                tax_class=line.tax_class,
                tax_rate_ppm=line.tax_rate_ppm,
                gross_amount=money(a.gross_amount, c),
                discount=money(a.discount, c),
                points_allocated=a.points_allocated,
                line_total=money(a.line_total, c),
                tax=money(a.tax, c),
                returned_quantity=line.returned_quantity,
            )
        )
    for entry in tax_breakdown(amounts):
        message.tax_breakdown.append(
            checkout_pb2.TaxBreakdown(
                tax_class=entry.tax_class,
                rate_ppm=entry.rate_ppm,
                net=money(entry.net, c),
                tax=money(entry.tax, c),
                gross=money(entry.gross, c),
            )
        )
    return message


def return_message(sale_return: SaleReturn) -> checkout_pb2.SaleReturn:
    c = sale_return.currency
    return checkout_pb2.SaleReturn(
        return_id=sale_return.return_id,
        original_sale_id=sale_return.original_sale_id,
        store_id=sale_return.store_id,
        terminal_id=sale_return.terminal_id,
        cashier_id=sale_return.cashier_id,
        customer_id=sale_return.customer_id,
        lines=[
            checkout_pb2.ReturnLine(
                line_id=line.line_id,
                sku=line.sku,
                quantity=line.refund.quantity,
                restock=line.restock,
                refund_amount=money(line.refund.refund_amount, c),
                tax=money(line.refund.tax, c),
                points_returned=line.refund.points_returned,
            )
            for line in sale_return.lines
        ],
        refund_tenders=[tender_message(t) for t in sale_return.refund_tenders],
        amount_refunded=money(sale_return.amount_refunded, c),
        points_returned=sale_return.points_returned,
        currency_code=c,
        reason=checkout_pb2.ReturnReason.Value(f"RETURN_REASON_{sale_return.reason.value}"),
        note=sale_return.note,
        returned_at=to_timestamp(sale_return.returned_at),
        receipt=checkout_pb2.Receipt(receipt_number=sale_return.receipt_number, lines=sale_return.receipt_lines),
        cash_rounding=money(sale_return.cash_rounding, c),
    )
