"""How events are written to the outbox: prepared (id, time, source, trace context), serialised, inserted in the
caller's transaction (the relay in `messaging` publishes them later), with the call's idempotency keys.

The tables themselves are in `storeplane_runtime.tables`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from opentelemetry import propagate
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storeplane_runtime.broadcast import CHANNEL
from storeplane_runtime.broadcast import encode as broadcast_encode
from storeplane_runtime.clock import timestamp_parts, utcnow
from storeplane_runtime.driver import driver_execute
from storeplane_runtime.event_ids import new_event_id
from storeplane_runtime.tables import idempotency_table, outbox_table
from storeplane_runtime.timestamps import from_timestamp

__all__ = ["PendingEvent", "event_type", "prepare", "remember", "trace_headers", "write"]


@dataclass(frozen=True)
class PendingEvent:
    """An event ready to be written to the outbox."""

    event_id: str
    event_type: str
    source: str
    subject: str
    store_id: str
    payload: bytes
    occurred_at: datetime
    headers: dict[str, str] = field(default_factory=dict)


def event_type(event: Message) -> str:
    """The routing key and AMQP `type`: the full protobuf name, e.g. `pos.checkout.v1.SaleCompleted`."""
    return event.DESCRIPTOR.full_name


def trace_headers() -> dict[str, str]:
    """The current trace context as message headers (W3C `traceparent`, baggage)."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def prepare(
    event: Message,
    *,
    source: str,
    subject: str = "",
    store_id: str = "",
    headers: Mapping[str, str] | None = None,
) -> PendingEvent:
    """Fill the event's meta (id, time, source) where empty, capture the trace context, serialise.

    `headers`: the trace context captured already (a unit of work captures it once for all its events)."""
    shape = _shape_of(event)
    now: datetime | None = None
    event_id = ""
    headers = trace_headers() if headers is None else headers if isinstance(headers, dict) else dict(headers)
    if shape.meta:
        meta: Any = getattr(event, shape.meta)
        if not meta.event_id:
            meta.event_id = new_event_id()
        event_id = meta.event_id
        if shape.occurred_at:
            stamp = meta.occurred_at
            if not meta.HasField("occurred_at"):
                now = utcnow()
                stamp.seconds, stamp.nanos = timestamp_parts(now)
            else:
                now = from_timestamp(stamp)
        if shape.source and not meta.source:
            meta.source = f"/storeplane/{source}"
        if shape.event_type and not meta.event_type:
            meta.event_type = shape.full_name
        if shape.store_id:
            if store_id and not meta.store_id:
                meta.store_id = store_id
            store_id = store_id or meta.store_id
        if shape.traceparent and not meta.traceparent:
            meta.traceparent = headers.get("traceparent", "")
    if not event_id:
        event_id = new_event_id()
    return PendingEvent(
        event_id=event_id,
        event_type=shape.full_name,
        source=source,
        subject=subject,
        store_id=store_id,
        payload=event.SerializeToString(deterministic=True),
        occurred_at=now or utcnow(),
        headers=headers,
    )


_INSERT = insert(outbox_table)
# PostgreSQL: all rows in one statement of fixed text, columns as arrays (in binary: psycopg escapes the text form of
# an array element by element), ids in the order of `events`.
_INSERT_PG = (
    "INSERT INTO outbox (event_id, event_type, source, subject, store_id, payload, headers, occurred_at, attempts)"
    " SELECT e.event_id, e.event_type, e.source, e.subject, e.store_id, e.payload, CAST(e.headers AS json),"
    " e.occurred_at, 0"
    " FROM unnest(CAST(%(event_ids)b AS text[]), CAST(%(event_types)b AS text[]), CAST(%(sources)b AS text[]),"
    "             CAST(%(subjects)b AS text[]), CAST(%(store_ids)b AS text[]), CAST(%(payloads)b AS bytea[]),"
    "             CAST(%(headers)b AS text[]), CAST(%(occurred_at)b AS timestamptz[]))"
    " WITH ORDINALITY AS e(event_id, event_type, source, subject, store_id, payload, headers, occurred_at, n)"
    " ORDER BY e.n"
)


# The same insert, and the notifications of the events of broadcast types (see storeplane_runtime.broadcast).
_NOTIFY_PG = f"SELECT count(pg_notify('{CHANNEL}', n)) FROM unnest(CAST(%(notifications)b AS text[])) AS n"
_INSERT_PG_BROADCAST = f"WITH ins AS ({_INSERT_PG}) {_NOTIFY_PG}"

# Request ids remembered with their answers (see storeplane_runtime.idempotency), any number in one statement; a key
# whose (caller, request id) a call committed first returns no row (one still running is waited for).
_REMEMBER_PG = (
    "INSERT INTO idempotency_keys (caller, request_id, method, request_hash, response, created_at)"
    " SELECT * FROM unnest(CAST(%(k_caller)b AS text[]), CAST(%(k_request_id)b AS text[]),"
    "                      CAST(%(k_method)b AS text[]), CAST(%(k_request_hash)b AS text[]),"
    "                      CAST(%(k_response)b AS bytea[]), CAST(%(k_created_at)b AS timestamptz[]))"
    " ON CONFLICT (caller, request_id) DO NOTHING RETURNING 1"
)
_COUNT_REMEMBERED_PG = f"WITH k AS ({_REMEMBER_PG}) SELECT count(*) AS remembered FROM k"
# The outbox rows and the request ids in one statement (one round trip less for every mutating call).
_INSERT_PG_REMEMBER = f"WITH ins AS ({_INSERT_PG}), k AS ({_REMEMBER_PG}) SELECT (SELECT count(*) FROM k) AS remembered"
_INSERT_PG_BROADCAST_REMEMBER = (
    f"WITH ins AS ({_INSERT_PG}), k AS ({_REMEMBER_PG})"
    f" SELECT (SELECT count(*) FROM k) AS remembered, ({_NOTIFY_PG}) AS told"
)
_REMEMBER = insert(idempotency_table)
_KEY_COLUMNS = ("caller", "request_id", "method", "request_hash", "response", "created_at")


def remember(connection: Connection, keys: Sequence[Mapping[str, Any]]) -> bool:
    """Insert idempotency key rows (columns as in `idempotency_table`, distinct keys) in the connection's
    transaction; False when a call with the same caller and request id as one of them committed first."""
    if not keys:
        return True
    if connection.dialect.name == "postgresql":
        return driver_execute(connection, _COUNT_REMEMBERED_PG, _key_params(keys)).fetchone().remembered == len(keys)
    try:  # SQLite: writers take the database lock at BEGIN, so a taken key was seen by the caller's lookup already
        connection.execute(_REMEMBER, [dict(key) for key in keys])
    except IntegrityError:
        return False
    return True


def _key_params(keys: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {f"k_{name}": [key[name] for key in keys] for name in _KEY_COLUMNS}


def write(
    connection: Connection | Session,
    events: Sequence[PendingEvent],
    broadcast: frozenset[str] = frozenset(),
    *,
    keys: Sequence[Mapping[str, Any]] = (),
) -> bool:
    """Insert the events as outbox rows in the connection's (or session's) transaction. On PostgreSQL, events of
    the `broadcast` types are also notified to every listening process (at commit).

    With `keys`, idempotency key rows are inserted as well (see `remember`, in the same statement on PostgreSQL);
    returns False when one of them was taken (the caller must roll back)."""
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    if bind.dialect.name == "postgresql":
        encoded: dict[int, str] = {}  # a unit of work shares one headers dict among its events: encode it once
        told = broadcast_encode(
            (e.event_type, e.store_id, e.payload, e.subject) for e in events if e.event_type in broadcast
        )
        if not keys:
            sql = _INSERT_PG_BROADCAST if told else _INSERT_PG
        else:
            sql = _INSERT_PG_BROADCAST_REMEMBER if told else _INSERT_PG_REMEMBER
        cursor = driver_execute(
            connection.connection() if isinstance(connection, Session) else connection,
            sql,
            {
                **({"notifications": told} if told else {}),
                **(_key_params(keys) if keys else {}),
                "event_ids": [e.event_id for e in events],
                "event_types": [e.event_type for e in events],
                "sources": [e.source for e in events],
                "subjects": [e.subject for e in events],
                "store_ids": [e.store_id for e in events],
                "payloads": [e.payload for e in events],
                "headers": [
                    encoded.get(id(e.headers)) or encoded.setdefault(id(e.headers), json.dumps(e.headers))
                    for e in events
                ],
                "occurred_at": [e.occurred_at for e in events],
            },
        )
        return not keys or cursor.fetchone().remembered == len(keys)
    connection.execute(
        _INSERT,
        [
            {
                "event_id": e.event_id,
                "event_type": e.event_type,
                "source": e.source,
                "subject": e.subject,
                "store_id": e.store_id,
                "payload": e.payload,
                "headers": e.headers,
                "occurred_at": e.occurred_at,
                "attempts": 0,
            }
            for e in events
        ],
    )
    return remember(connection.connection() if isinstance(connection, Session) else connection, keys)


@dataclass(frozen=True)
class _Shape:
    """Where an event type keeps its meta and which meta fields exist (looked up once per type)."""

    full_name: str
    meta: str  # name of the EventMeta field, "" if none
    occurred_at: bool = False
    source: bool = False
    event_type: bool = False
    store_id: bool = False
    traceparent: bool = False


_SHAPES: dict[str, _Shape] = {}


def _shape_of(event: Message) -> _Shape:
    descriptor = event.DESCRIPTOR
    shape = _SHAPES.get(descriptor.full_name)
    if shape is None:
        meta = _meta_of(event)
        if meta is None:
            shape = _Shape(descriptor.full_name, "")
        else:
            field_name = next(
                fd.name
                for fd in descriptor.fields
                if fd.message_type is not None and fd.message_type.name == "EventMeta"
            )
            shape = _Shape(
                descriptor.full_name,
                field_name,
                **{
                    name: _has_field(meta, name)
                    for name in ("occurred_at", "source", "event_type", "store_id", "traceparent")
                },
            )
        _SHAPES[descriptor.full_name] = shape  # same result from any thread: a race only repeats the lookup
    return shape


def _has_field(message: Message, name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name


def _meta_of(event: Message) -> Message | None:
    # Events carry their id and time in a field of type pos.common.v1.EventMeta (whatever its name).
    for fd in event.DESCRIPTOR.fields:
        if fd.message_type is not None and fd.message_type.name == "EventMeta":
            sub: Message = getattr(event, fd.name)
            return sub
    return None
