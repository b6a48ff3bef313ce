"""Event protos of the customer's changes. They carry ids, the home store and the loyalty card number (the one
pseudonymous key loyalty enrols and anonymises by), never a name, email or phone (events.proto)."""

from __future__ import annotations

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from customer.domain import CustomerErased, CustomerRegistered, CustomerUpdated
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.customer.v1 import events_pb2

CustomerEvent = CustomerRegistered | CustomerUpdated | CustomerErased

# The events this service consumes, by type: an erasure clears the card number from copies held for a retry.
CONSUMED = {e.DESCRIPTOR.full_name: e.FromString for e in (checkout_events.SaleCompleted, checkout_events.SaleReturned)}


def event_message(event: CustomerEvent) -> tuple[Message, str]:
    """The event proto and the store it concerns (the envelope's store_id: the home store; none for an erasure)."""
    if isinstance(event, CustomerRegistered):
        registered = events_pb2.CustomerRegistered(
            customer_id=event.customer_id,
            loyalty_card_number=event.loyalty_card_number,
            home_store_id=event.home_store_id,
        )
        return registered, event.home_store_id
    if isinstance(event, CustomerUpdated):
        updated = events_pb2.CustomerUpdated(
            customer_id=event.customer_id,
            update_mask=FieldMask(paths=list(event.changed)),
            loyalty_card_number=event.loyalty_card_number,
            home_store_id=event.home_store_id,
        )
        return updated, event.home_store_id
    erased = events_pb2.CustomerErased(customer_id=event.customer_id, loyalty_card_number=event.loyalty_card_number)
    return erased, ""
