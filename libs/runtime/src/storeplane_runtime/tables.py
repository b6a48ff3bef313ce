"""The tables every service database has besides its own: outbox, inbox, held events and idempotency keys.

Created by each service's first migrations (`storeplane_runtime.migrations.create_messaging_tables`).
"""

from __future__ import annotations

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
)

__all__ = [
    "ID",
    "NAMING",
    "held_events_table",
    "idempotency_table",
    "inbox_table",
    "messaging_metadata",
    "outbox_table",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

messaging_metadata = MetaData(naming_convention=NAMING)

# The type of an autoincrementing id column in every service's tables: BigInteger, but INTEGER on SQLite so it
# stays a rowid alias (autoincrement).
ID = BigInteger().with_variant(Integer(), "sqlite")

outbox_table = Table(
    "outbox",
    messaging_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
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
# The pruner deletes inbox rows by age (messaging.pruning). BRIN on PostgreSQL: rows arrive in time order, and a
# B-tree updated on every applied event cost the consumer about a tenth of its throughput (make bench).
Index("ix_inbox_processed_at", inbox_table.c.processed_at, postgresql_using="brin")

# Events a consumer of the in-process bus has taken into custody: waiting for a retry (`due_at`) or parked
# (`reason`, `held_at`). A full envelope, so that the event survives a restart after the relay marked it sent.
held_events_table = Table(
    "held_events",
    messaging_metadata,
    Column("consumer", String(100), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("source", String(100), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("trace_headers", JSON, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),  # "waiting" (for a retry) or "parked"
    Column("attempt", Integer, nullable=False),  # waiting: the attempt it is due for; parked: the last one made
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=False),  # the last failure
    Column("held_at", DateTime(timezone=True), nullable=False),  # when it took its present state
    PrimaryKeyConstraint("consumer", "event_id"),
)
Index("ix_held_events_due", held_events_table.c.consumer, held_events_table.c.state, held_events_table.c.due_at)

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
