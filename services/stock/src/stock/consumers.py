"""Events stock applies: sales commit reservations and take goods off the shelf, returns restock, voided
baskets release. Each runs in the consumer's unit of work, with its inbox row, exactly once per event id."""

from __future__ import annotations

from pos.checkout.v1 import events_pb2 as checkout_events
from stock import use_cases
from stock.domain import ReservationState, StockPolicy
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import Consumers


def stock_consumers(policy: StockPolicy) -> Consumers:
    """The handlers of the `stock` consumer (queue `stock.events`)."""
    consumers = Consumers("stock")

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale_completed(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        use_cases.commit_sale(
            uow,
            policy,
            sale_id=event.sale_id or event.client_sale_id or event.meta.event_id,
            store_id=event.store_id,
            reservation_id=event.reservation_id,
            lines=[(line.sku, line.quantity) for line in event.lines],
            now=utcnow(),
        )

    @consumers.handler(checkout_events.SaleReturned)
    def on_sale_returned(uow: UnitOfWork, event: checkout_events.SaleReturned) -> None:
        use_cases.restock_return(
            uow,
            policy,
            return_id=event.return_id or event.meta.event_id,
            store_id=event.store_id,
            lines=[(line.sku, line.quantity) for line in event.lines if line.restock],
            now=utcnow(),
        )

    @consumers.handler(checkout_events.BasketVoided)
    def on_basket_voided(uow: UnitOfWork, event: checkout_events.BasketVoided) -> None:
        if event.reservation_id:
            use_cases.end_reservation(uow, policy, event.reservation_id, to=ReservationState.RELEASED, now=utcnow())

    return consumers
