"""Erasing a personal value (a loyalty card number) from copies kept in the kit's tables that the kit's
`storeplane_runtime.erasure` does not reach by subject: the answers kept for request ids (HoldPoints and
AdjustPoints answers show the account, card included) and events held for a retry or parked. Each copy is found by
its bytes, decoded, every string field equal to the value cleared, and written back; nothing else changes.
(Outbox rows are the kit's: loyalty publishes with the account's subject, and `forget_sent_events` deletes them.)

Kit candidate: nothing here is loyalty's but the message types it decodes (`DECODERS`); it finds stored answers
without recording which (caller, request_id) touched a customer, which `erasure.rewrite_answers` needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from sqlalchemy import ColumnElement, LargeBinary, bindparam, func, select, text, update

from pos.checkout.v1 import events_pb2 as checkout_events
from pos.customer.v1 import events_pb2 as customer_events
from pos.loyalty.v1 import events_pb2 as loyalty_events
from pos.loyalty.v1 import loyalty_pb2
from storeplane_runtime.sql import Db, is_postgres
from storeplane_runtime.tables import held_events_table, idempotency_table

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


def clear_value(message: Message, value: str) -> bool:
    """Clear every string field (nested ones too) equal to `value`; True when any was."""
    changed = False
    for field, content in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                kept = [item for item in content if item != value]
                if len(kept) != len(content):
                    del content[:]
                    content.extend(kept)
                    changed = True
            elif content == value:
                message.ClearField(field.name)
                changed = True
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = content if field.is_repeated else [content]
            for item in items:
                if not isinstance(item, Message):
                    continue  # map entries of scalars
                changed = clear_value(item, value) or changed
    return changed


def _containing(conn: Db, column: ColumnElement[Any], needle: bytes) -> ColumnElement[bool]:
    if is_postgres(conn):
        return text(f"position(:needle in {column.name}) > 0").bindparams(  # type: ignore[return-value]
            bindparam("needle", needle, type_=LargeBinary)
        )
    return func.instr(column, needle) > 0


def scrub_card(conn: Db, card_number: str) -> int:
    """Clear `card_number` from this service's stored answers and held events; returns how many rows were
    rewritten. Rows whose type it cannot decode are left alone."""
    needle = card_number.encode()
    rewritten = 0
    for table, key_columns, type_column, payload_column in (
        (held_events_table, ["consumer", "event_id"], "event_type", "payload"),
        (idempotency_table, ["caller", "request_id"], "method", "response"),
    ):
        payload = table.c[payload_column]
        keys = [table.c[k] for k in key_columns]
        query = select(*keys, table.c[type_column], payload).where(_containing(conn, payload, needle))
        for row in conn.execute(query).all():
            decode = DECODERS.get(row[len(keys)])
            if decode is None:
                continue
            try:
                message = decode(bytes(row[-1]))
            except DecodeError:
                continue
            if clear_value(message, card_number):
                where = [key == row[i] for i, key in enumerate(keys)]
                conn.execute(update(table).where(*where).values({payload_column: message.SerializeToString()}))
                rewritten += 1
    return rewritten
