"""Events loyalty applies: registrations enrol, card changes follow, erasures anonymise; sales earn and capture
holds, returns claw back and refund, voided baskets release holds. Each runs in the consumer's unit of work, with
its inbox row, exactly once per event id (and once per sale or return id, whatever the event id)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from loyalty import sales, use_cases
from loyalty.domain import LoyaltyPolicy
from loyalty.storage import ReturnedGoods
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.customer.v1 import events_pb2 as customer_events
from storeplane_runtime.clock import as_utc
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import Consumers


def sale_of(event: checkout_events.SaleCompleted, now: datetime) -> sales.Sale:
    """What loyalty reads from a SaleCompleted (the time of an event without one: now)."""
    completed_at = as_utc(event.completed_at.ToDatetime()) if event.HasField("completed_at") else now
    return sales.Sale(
        sale_id=event.sale_id or event.client_sale_id or event.meta.event_id,
        store_id=event.store_id,
        customer_id=event.customer_id,
        card_number=event.loyalty_card_number,
        currency_code=event.currency_code or event.amount_paid.currency_code,
        amount_paid=event.amount_paid.amount_minor,
        points_redeemed=event.points_redeemed,
        hold_id=event.hold_id,
        completed_at=completed_at,
        lines=tuple(
            sales.SoldLine(line.line_id, line.quantity, line.total_amount.amount_minor) for line in event.lines
        ),
    )


def goods_of(event: checkout_events.SaleReturned, now: datetime) -> ReturnedGoods:
    returned_at = as_utc(event.returned_at.ToDatetime()) if event.HasField("returned_at") else now
    return sales.returned_goods(
        return_id=event.return_id or event.meta.event_id,
        sale_id=event.original_sale_id,
        store_id=event.store_id,
        currency_code=event.currency_code or event.amount_refunded.currency_code,
        amount_refunded=event.amount_refunded.amount_minor,
        points_returned=event.points_returned,
        lines=[(line.line_id, line.quantity, line.points_returned) for line in event.lines],
        returned_at=returned_at,
    )


def loyalty_consumers(policy: LoyaltyPolicy, clock: Callable[[], datetime], name: str = "loyalty") -> Consumers:
    """The handlers of the `loyalty` consumer (queue `loyalty.events`; another `name` for benchmarks)."""
    consumers = Consumers(name)

    @consumers.handler(customer_events.CustomerRegistered)
    def on_customer_registered(uow: UnitOfWork, event: customer_events.CustomerRegistered) -> None:
        if event.customer_id:
            use_cases.enrol(
                uow, policy, customer_id=event.customer_id, card_number=event.loyalty_card_number, now=clock()
            )

    @consumers.handler(customer_events.CustomerUpdated)
    def on_customer_updated(uow: UnitOfWork, event: customer_events.CustomerUpdated) -> None:
        if event.customer_id and event.loyalty_card_number:
            use_cases.replace_card(
                uow, policy, customer_id=event.customer_id, card_number=event.loyalty_card_number, now=clock()
            )

    @consumers.handler(customer_events.CustomerErased)
    def on_customer_erased(uow: UnitOfWork, event: customer_events.CustomerErased) -> None:
        use_cases.erase(uow, customer_id=event.customer_id, card_number=event.loyalty_card_number, now=clock())

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale_completed(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        now = clock()
        sales.book_sale(uow, policy, sale_of(event, now), now=now)

    @consumers.handler(checkout_events.SaleReturned)
    def on_sale_returned(uow: UnitOfWork, event: checkout_events.SaleReturned) -> None:
        now = clock()
        sales.book_return(
            uow,
            policy,
            goods_of(event, now),
            customer_id=event.customer_id,
            card_number=event.loyalty_card_number,
            now=now,
        )

    @consumers.handler(checkout_events.BasketVoided)
    def on_basket_voided(uow: UnitOfWork, event: checkout_events.BasketVoided) -> None:
        if event.hold_id:
            use_cases.release_hold(uow, event.hold_id, now=clock())

    return consumers
