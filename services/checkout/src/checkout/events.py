"""The events checkout publishes, as the contract's messages: SaleCompleted, SaleReturned, BasketVoided."""

from __future__ import annotations

from datetime import datetime

from checkout.domain.baskets import Basket, VoidReason
from checkout.domain.sales import Sale, SaleReturn
from checkout.messages import money, tender_message
from pos.checkout.v1 import checkout_pb2, events_pb2
from pos.common.v1 import common_pb2
from storeplane_runtime.timestamps import to_timestamp


def sale_completed(sale: Sale, *, loyalty_card_number: str, hold: bool, reservation: bool) -> events_pb2.SaleCompleted:
    """The sale as stock, loyalty and customer need it; the loyalty card travels here, never into checkout's tables."""
    c = sale.currency
    event = events_pb2.SaleCompleted(
        meta=common_pb2.EventMeta(
            store_id=sale.store_id,
            correlation_id=sale.basket_id or sale.client_sale_id,
            occurred_at=to_timestamp(sale.completed_at),
        ),
        sale_id=sale.sale_id,
        basket_id=sale.basket_id,
        client_sale_id=sale.client_sale_id,
        store_id=sale.store_id,
        terminal_id=sale.terminal_id,
        cashier_id=sale.cashier_id,
        customer_id=sale.customer_id,
        loyalty_card_number=loyalty_card_number,
        currency_code=c,
        subtotal=money(sale.subtotal, c),
        tax_total=money(sale.tax_total, c),
        total=money(sale.total, c),
        cash_rounding=money(sale.cash_rounding, c),
        amount_paid=money(sale.amount_paid, c),
        points_redeemed=sale.points_redeemed,
        hold_id=sale.basket_id if hold and sale.points_redeemed else "",
        reservation_id=sale.basket_id if reservation else "",
        offline=sale.offline,
        tenders=[tender_message(p.tender) for p in sale.tenders],
        completed_at=to_timestamp(sale.completed_at),
    )
    for line, a in zip(sale.lines, sale.line_amounts(), strict=True):
        event.lines.append(
            events_pb2.SaleCompleted.Line(
                line_id=line.line_id,
                sku=line.sku,
                quantity=line.quantity,
                unit_price=money(line.unit_price, c),
                net_amount=money(a.net_amount, c),
                tax=money(a.tax, c),
                total_amount=money(a.total_amount, c),
                points_allocated=a.points_allocated,
                points_discount=money(a.discount, c),
                tax_class=line.tax_class,
                tax_rate_ppm=line.tax_rate_ppm,
            )
        )
    return event


def sale_returned(sale_return: SaleReturn) -> events_pb2.SaleReturned:
    c = sale_return.currency
    return events_pb2.SaleReturned(
        meta=common_pb2.EventMeta(
            store_id=sale_return.store_id,
            correlation_id=sale_return.original_sale_id,
            occurred_at=to_timestamp(sale_return.returned_at),
        ),
        return_id=sale_return.return_id,
        original_sale_id=sale_return.original_sale_id,
        store_id=sale_return.store_id,
        original_store_id=sale_return.original_store_id,
        customer_id=sale_return.customer_id,
        lines=[
            events_pb2.SaleReturned.Line(
                line_id=line.line_id,
                sku=line.sku,
                quantity=line.refund.quantity,
                restock=line.restock,
                refunded_amount=money(line.refund.refund_amount, c),
                points_returned=line.refund.points_returned,
            )
            for line in sale_return.lines
        ],
        currency_code=c,
        amount_refunded=money(sale_return.amount_refunded, c),
        points_returned=sale_return.points_returned,
        returned_at=to_timestamp(sale_return.returned_at),
        cash_rounding=money(sale_return.cash_rounding, c),
    )


def basket_voided(basket: Basket, reason: VoidReason, now: datetime) -> events_pb2.BasketVoided:
    return events_pb2.BasketVoided(
        meta=common_pb2.EventMeta(
            store_id=basket.store_id, correlation_id=basket.basket_id, occurred_at=to_timestamp(now)
        ),
        basket_id=basket.basket_id,
        store_id=basket.store_id,
        terminal_id=basket.terminal_id,
        reservation_id=basket.basket_id if basket.reserve_tried else "",
        hold_id=basket.basket_id if basket.hold_tried else "",
        reason=checkout_pb2.VoidReason.Value(f"VOID_REASON_{reason.value}"),
        voided_at=to_timestamp(now),
    )
