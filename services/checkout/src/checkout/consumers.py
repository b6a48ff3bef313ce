"""Events checkout applies: ItemUpdated keeps its own item cache (a newer revision wins; events may come out of
order); CustomerErased drops the copies of the customer's personal data it may hold (erasure.py). Each runs in the
consumer's unit of work, with its inbox row, exactly once per event id."""

from __future__ import annotations

from checkout import erasure, use_cases
from checkout.domain.baskets import Item
from pos.customer.v1 import events_pb2 as customer_events
from pos.stock.v1 import events_pb2 as stock_events
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import Consumers


def checkout_consumers() -> Consumers:
    """The handlers of the `checkout` consumer (queue `checkout.events`)."""
    consumers = Consumers("checkout")

    @consumers.handler(stock_events.ItemUpdated)
    def on_item_updated(uow: UnitOfWork, event: stock_events.ItemUpdated) -> None:
        item = event.item
        use_cases.cache_item(
            uow,
            Item(
                sku=item.sku,
                name=item.name,
                tax_class=item.tax_class,
                prices={p.currency_code: p.amount_minor for p in item.prices},
                barcodes=tuple(item.barcodes),
                revision=item.revision,
            ),
            utcnow(),
        )

    @consumers.handler(customer_events.CustomerErased)
    def on_customer_erased(uow: UnitOfWork, event: customer_events.CustomerErased) -> None:
        erasure.erase_customer(uow, customer_id=event.customer_id, card_number=event.loyalty_card_number, now=utcnow())

    return consumers
