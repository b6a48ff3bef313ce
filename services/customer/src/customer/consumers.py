"""Events the customer service applies: checkout's sales and returns of known customers become purchase statistics.
Each runs in the consumer's unit of work with its inbox row, exactly once per event id, and once per sale or return
id besides (a replay under a new event id changes nothing). Anonymous sales are ignored."""

from __future__ import annotations

from customer import use_cases
from customer.domain import Purchase, Refund
from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import Consumers
from storeplane_runtime.timestamps import from_timestamp


def customer_consumers() -> Consumers:
    """The handlers of the `customer` consumer (queue `customer.events`)."""
    consumers = Consumers("customer")

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale_completed(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        if not event.customer_id:
            return
        now = utcnow()
        purchase = Purchase(
            customer_id=event.customer_id,
            sale_id=event.sale_id or event.client_sale_id or event.meta.event_id,
            store_id=event.store_id,
            currency=event.currency_code or event.amount_paid.currency_code,
            amount_paid=event.amount_paid.amount_minor,
            at=from_timestamp(event.completed_at) if event.HasField("completed_at") else now,
        )
        use_cases.count_purchase(uow, purchase, now=now)

    @consumers.handler(checkout_events.SaleReturned)
    def on_sale_returned(uow: UnitOfWork, event: checkout_events.SaleReturned) -> None:
        if not event.customer_id:
            return
        now = utcnow()
        refund = Refund(
            customer_id=event.customer_id,
            return_id=event.return_id or event.meta.event_id,
            currency=event.currency_code or event.amount_refunded.currency_code,
            amount_refunded=event.amount_refunded.amount_minor,
            at=from_timestamp(event.returned_at) if event.HasField("returned_at") else now,
        )
        use_cases.count_refund(uow, refund, now=now)

    return consumers
