"""Outbox, inbox and idempotency tables every service has, and how events are written to the outbox.

Rows are written in the caller's transaction; the relay (messaging) publishes them later. The inbox
records which events a consumer has applied, so a redelivered event has no second effect.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message
from opentelemetry import propagate
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    insert,
)
from sqlalchemy.orm import Session

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

messaging_metadata = MetaData(naming_convention=NAMING)

# BigInteger ids are INTEGER on SQLite so they stay rowid aliases (autoincrement).
_Id = BigInteger().with_variant(Integer(), "sqlite")

outbox_table = Table(
    "outbox",
    messaging_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("event_type", String(200), nullable=False),
    Column("source", String(100), nullable=False),
    Column("subject", String(200), nullable=False, default=""),
    Column("store_id", String(64), nullable=False, default=""),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False, default=dict),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)
Index("ix_outbox_unsent", outbox_table.c.sent_at, outbox_table.c.id)

inbox_table = Table(
    "inbox",
    messaging_metadata,
    Column("consumer", String(100), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("consumer", "event_id"),
)

idempotency_table = Table(
    "idempotency_keys",
    messaging_metadata,
    Column("caller", String(200), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("method", String(200), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("caller", "request_id"),
)
Index("ix_idempotency_keys_created_at", idempotency_table.c.created_at)


def utcnow() -> datetime:
    return datetime.now(UTC)


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


def prepare(event: Message, *, source: str, subject: str = "", store_id: str = "") -> PendingEvent:
    """Fill the event's meta (id, time, source) where empty, capture the trace context, serialise."""
    meta = _meta_of(event)
    now = utcnow()
    event_id = ""
    if meta is not None:
        if not meta.event_id:  # type: ignore[attr-defined]
            meta.event_id = str(uuid.uuid4())  # type: ignore[attr-defined]
        event_id = meta.event_id  # type: ignore[attr-defined]
        if _has_field(meta, "occurred_at"):
            if not meta.HasField("occurred_at"):
                meta.occurred_at.FromDatetime(now)  # type: ignore[attr-defined]
            now = meta.occurred_at.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]
        if _has_field(meta, "source") and not meta.source:  # type: ignore[attr-defined]
            meta.source = f"/storeplane/{source}"  # type: ignore[attr-defined]
        if _has_field(meta, "event_type") and not meta.event_type:  # type: ignore[attr-defined]
            meta.event_type = event_type(event)  # type: ignore[attr-defined]
        if _has_field(meta, "store_id"):
            store_id = store_id or meta.store_id  # type: ignore[attr-defined]
    if not event_id:
        event_id = str(uuid.uuid4())
    headers: dict[str, str] = {}
    propagate.inject(headers)
    if meta is not None and _has_field(meta, "traceparent") and not meta.traceparent:  # type: ignore[attr-defined]
        meta.traceparent = headers.get("traceparent", "")  # type: ignore[attr-defined]
    return PendingEvent(
        event_id=event_id,
        event_type=event_type(event),
        source=source,
        subject=subject,
        store_id=store_id,
        payload=event.SerializeToString(deterministic=True),
        occurred_at=now,
        headers=headers,
    )


def write(session: Session, events: Sequence[PendingEvent]) -> None:
    """Insert the events as outbox rows in the session's transaction."""
    session.execute(
        insert(outbox_table),
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


def _has_field(message: Message, name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name


def _meta_of(event: Message) -> Message | None:
    # Events carry their id and time in a field of type pos.common.v1.EventMeta (whatever its name).
    for fd in event.DESCRIPTOR.fields:
        if fd.message_type is not None and fd.message_type.name == "EventMeta":
            sub: Message = getattr(event, fd.name)
            return sub
    return None
