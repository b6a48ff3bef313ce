"""A customer erased (CustomerErased): the copies of their personal data checkout may still hold go. Sales and returns
keep the customer id only (the tombstone key), so they need nothing; what remains is an open basket's customer
snapshot (display name, loyalty card), the sent outbox rows of their sales (published with `subject=customer_id`;
SaleCompleted carries the card), and the card in answers kept for request ids (CompleteSale, and every basket answer
showing the customer: the card, and the display name beside the customer id), scrubbed by
`storeplane_runtime.erasure.scrub_value` and `scrub_copies`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy import select

from checkout import storage
from checkout.domain.baskets import Basket, BasketState, Customer
from checkout.storage.tables import baskets
from pos.checkout.v1 import checkout_pb2
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.erasure import clear_beside, forget_sent_events, scrub_copies, scrub_value

# Stored answers by RPC method (the only checkout copies scrub_value rewrites: checkout holds no customer events).
DECODERS: Mapping[str, Callable[[bytes], Message]] = {
    f"/pos.checkout.v1.CheckoutService/{m.name}": getattr(checkout_pb2, m.output_type.name).FromString
    for m in checkout_pb2.DESCRIPTOR.services_by_name["CheckoutService"].methods
}


def erase_customer(uow: UnitOfWork, *, customer_id: str, card_number: str, now: datetime) -> int:
    """Drop the erased customer's copies; returns how many open baskets showed them."""
    conn = uow.connection
    if customer_id:
        forget_sent_events(conn, customer_id)  # unsent ones go out first (consumers need them before the erasure)
    cleared = 0
    query = select(baskets.c.basket_id).where(
        baskets.c.state == BasketState.OPEN.value, baskets.c.customer.is_not(None)
    )
    for basket_id in list(conn.execute(query).scalars()):
        basket = storage.find_basket(conn, basket_id, lock=True)
        if basket is None or basket.customer is None:
            continue
        if (customer_id and basket.customer.customer_id == customer_id) or (
            card_number and basket.customer.loyalty_card_number == card_number
        ):
            storage.save_basket(conn, _without_personal_data(basket, basket.customer), now)
            cleared += 1
    if card_number:
        scrub_value(conn, card_number, DECODERS)
    if customer_id:  # the display name ("Anna S.") of every answer that showed the customer
        personal = ("display_name", "loyalty_card_number")
        scrub_copies(conn, customer_id, DECODERS, lambda m: clear_beside(m, "customer_id", customer_id, personal))
    return cleared


def _without_personal_data(basket: Basket, customer: Customer) -> Basket:
    return replace(basket, customer=Customer(customer.customer_id, loyalty_unavailable=customer.loyalty_unavailable))
