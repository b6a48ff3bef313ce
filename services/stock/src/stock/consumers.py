"""Events stock applies: sales commit reservations and take goods off the shelf, returns restock, voided
baskets release. Each runs in the consumer's unit of work, with its inbox row, exactly once per event id."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from pos.checkout.v1 import events_pb2 as checkout_events
from stock import use_cases
from stock.domain import ReservationState, StockPolicy
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import Consumers


def stock_consumers(policy: StockPolicy) -> Consumers:
    """The handlers of the `stock` consumer (queue `stock.events`)."""
    consumers = Consumers("stock")

    @consumers.before_batch
    def lock_in_order(uow: UnitOfWork, events: Sequence[Message]) -> None:
        # One transaction applies many events: their locks are taken up front, in Reserve's order (no deadlocks).
        reservation_ids: set[str] = set()
        level_keys: set[tuple[str, str]] = set()
        for event in events:
            if isinstance(event, checkout_events.SaleCompleted):
                reservation_ids.add(event.reservation_id)
                level_keys.update((event.store_id, line.sku) for line in event.lines)
            elif isinstance(event, checkout_events.SaleReturned):
                level_keys.update((event.store_id, line.sku) for line in event.lines if line.restock)
            elif isinstance(event, checkout_events.BasketVoided):
                reservation_ids.add(event.reservation_id)
        reservation_ids.discard("")
        use_cases.lock_for_events(uow, reservation_ids=reservation_ids, level_keys=level_keys)

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
