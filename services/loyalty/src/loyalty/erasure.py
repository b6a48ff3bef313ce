"""Erasing a loyalty card number from the copies kept in the kit's tables that are not found by subject: the answers
kept for request ids (HoldPoints and AdjustPoints answers show the account, card included) and events held for a
retry or parked, by `storeplane_runtime.erasure.scrub_value` with the message types loyalty stores (`DECODERS`).
(Outbox rows: loyalty publishes with the account's subject, and `erasure.forget_sent_events` deletes them.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from google.protobuf.message import Message

from pos.checkout.v1 import events_pb2 as checkout_events
from pos.customer.v1 import events_pb2 as customer_events
from pos.loyalty.v1 import events_pb2 as loyalty_events
from pos.loyalty.v1 import loyalty_pb2
from storeplane_runtime.erasure import scrub_value
from storeplane_runtime.sql import Db

_EVENTS: list[type[Message]] = [
    loyalty_events.PointsEarned,
    loyalty_events.PointsRedeemed,
    loyalty_events.TierChanged,
    checkout_events.SaleCompleted,
    checkout_events.SaleReturned,
    customer_events.CustomerRegistered,
    customer_events.CustomerUpdated,
    customer_events.CustomerErased,
]
# By event type (outbox, held events) and by RPC method (stored answers).
DECODERS: Mapping[str, Callable[[bytes], Message]] = {
    **{e.DESCRIPTOR.full_name: e.FromString for e in _EVENTS},
    **{
        f"/pos.loyalty.v1.LoyaltyService/{m.name}": getattr(loyalty_pb2, m.output_type.name).FromString
        for m in loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"].methods
    },
}


def scrub_card(conn: Db, card_number: str) -> int:
    """Clear `card_number` from this service's stored answers and held events; returns how many rows were rewritten."""
    return scrub_value(conn, card_number, DECODERS)
