"""What a service must do to its kit tables when a customer is erased (GDPR art. 17), beside its own rows.

Two kit tables can hold a copy of personal data a service once wrote:

- the outbox keeps sent events for `OUTBOX_RETENTION_HOURS`; an event about a customer (published with
  `subject=customer_id`) may carry the loyalty card number: `forget_sent_events` deletes the sent ones. Events not
  sent yet are left to go out (consumers must still see them, before the erasure event that follows them);
  `forget_sent_events_of`, run by a sweeper over the recently erased subjects, deletes them (and the erasure event
  itself, which names the card so that loyalty can find the account) once they are sent.
- idempotency keys keep each mutating call's answer for `idempotency.RETENTION`, so a retry gets it again; an answer
  with a customer's profile in it is PII. `rewrite_answers` replaces those answers with ones the caller builds from
  the tombstone: a retry after the erasure then learns the customer is erased, and the request id stays taken (it
  does not register the customer a second time).

The service must know which of its requests touched the customer (the customer service records each
(caller, request_id) with the customer id in its own table, and drops that record here too) — or find the copies by
their content: `scrub_value` looks for a personal value (a card number) in the stored answers and in the events held
for a retry or parked, decodes each copy, clears every string field equal to it and writes it back (loyalty does
this on CustomerErased; it scans the 48 h of kept answers, which an erasure can afford).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from sqlalchemy import ColumnElement, LargeBinary, Select, and_, bindparam, delete, func, select, text, update
from sqlalchemy.engine import Connection

from storeplane_runtime.sql import Db, is_postgres
from storeplane_runtime.tables import held_events_table, idempotency_table, outbox_table

__all__ = [
    "clear_beside",
    "clear_value",
    "forget_sent_events",
    "forget_sent_events_of",
    "rewrite_answers",
    "scrub_copies",
    "scrub_value",
]


def forget_sent_events(conn: Connection, subject: str) -> int:
    """Delete the sent outbox rows published with `subject`; returns how many. Unsent rows stay (they go out)."""
    if not subject:
        raise ValueError("forget_sent_events needs a subject: an empty one would match every subject-less event")
    t = outbox_table
    result = conn.execute(delete(t).where(and_(t.c.subject == subject, t.c.sent_at.is_not(None))))
    return int(result.rowcount)


def forget_sent_events_of(conn: Connection, subjects: Select[tuple[str]], limit: int) -> int:
    """Delete up to `limit` sent outbox rows whose subject is one of `subjects` (a one-column select, e.g. the ids
    of customers erased within the outbox retention); returns how many. A `sweeps.Sweeper` step."""
    t = outbox_table
    due = select(t.c.id).where(t.c.sent_at.is_not(None), t.c.subject.in_(subjects)).limit(limit)
    ids = list(conn.execute(due).scalars())
    if ids:
        conn.execute(delete(t).where(t.c.id.in_(ids)))
    return len(ids)


def rewrite_answers(conn: Connection, answers: Iterable[tuple[str, str, bytes]]) -> int:
    """Replace the stored answer of each (caller, request_id) with the given serialised response; returns how many
    keys were still kept (expired ones are gone already)."""
    t = idempotency_table
    statement = (
        update(t)
        .where(and_(t.c.caller == bindparam("a_caller"), t.c.request_id == bindparam("a_request_id")))
        .values(response=bindparam("a_response"))
    )
    rows = [{"a_caller": c, "a_request_id": r, "a_response": body} for c, r, body in answers]
    if not rows:
        return 0
    result = conn.execute(statement, rows)
    return int(result.rowcount)


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


def clear_beside(message: Message, key_field: str, key_value: str, fields: Iterable[str]) -> bool:
    """In every (nested) message whose `key_field` is `key_value`, clear `fields` (e.g. beside `customer_id`, the
    `display_name` and `loyalty_card_number` a basket showed); True when any was set."""
    changed = False
    names = message.DESCRIPTOR.fields_by_name
    if key_field in names and getattr(message, key_field) == key_value:
        for name in fields:
            if name not in names:
                continue
            present = message.HasField(name) if names[name].has_presence else bool(getattr(message, name))
            if present:
                message.ClearField(name)
                changed = True
    for field, content in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in content if field.is_repeated else [content]:
                if isinstance(item, Message):
                    changed = clear_beside(item, key_field, key_value, fields) or changed
    return changed


def _containing(conn: Db, column: ColumnElement[Any], needle: bytes) -> ColumnElement[bool]:
    if is_postgres(conn):
        return text(f"position(:needle in {column.name}) > 0").bindparams(  # type: ignore[return-value]
            bindparam("needle", needle, type_=LargeBinary)
        )
    return func.instr(column, needle) > 0


def scrub_value(
    conn: Db, value: str, decoders: Mapping[str, Callable[[bytes], Message]], *, answers: bool = True
) -> int:
    """Clear `value` from the held events and (with `answers`) the stored answers; returns how many rows were
    rewritten. `decoders` parse a payload by its event type or a stored answer by its full method name; rows of
    other types are left alone."""
    return scrub_copies(conn, value, decoders, lambda message: clear_value(message, value), answers=answers)


def scrub_copies(
    conn: Db,
    needle: str,
    decoders: Mapping[str, Callable[[bytes], Message]],
    edit: Callable[[Message], bool],
    *,
    answers: bool = True,
) -> int:
    """Rewrite the held events and (with `answers`) stored answers whose bytes contain `needle` (a customer id, a
    card number) by `edit`, which changes the decoded message in place and says whether it did; returns how many
    rows were rewritten."""
    found = needle.encode()
    rewritten = 0
    places = [(held_events_table, ["consumer", "event_id"], "event_type", "payload")]
    if answers:
        places.append((idempotency_table, ["caller", "request_id"], "method", "response"))
    for table, key_columns, type_column, payload_column in places:
        payload = table.c[payload_column]
        keys = [table.c[k] for k in key_columns]
        query = select(*keys, table.c[type_column], payload).where(_containing(conn, payload, found))
        for row in conn.execute(query).all():
            decode = decoders.get(row[len(keys)])
            if decode is None:
                continue
            try:
                message = decode(bytes(row[-1]))
            except DecodeError:
                continue
            if edit(message):
                where = [key == row[i] for i, key in enumerate(keys)]
                conn.execute(update(table).where(*where).values({payload_column: message.SerializeToString()}))
                rewritten += 1
    return rewritten
