"""The customer service's tables (migration 0004 creates them) and where personal data lives in them.

PII_COLUMNS is the complete list of columns holding personal data: erasure sets every one of them to NULL (the
unique indexes then free the email and phone), and a test checks an erased row has nothing left in them. Besides
these, personal data passes through the kit's tables: `idempotency_keys.response` keeps the answers of
RegisterCustomer and UpdateCustomer (`customer_requests` says which: erasure replaces them with the tombstone), and
the outbox keeps the events (ids and the card number only): erasure deletes the sent ones of the customer at once,
and the rest, with the erasure event itself, as soon as they are sent (`pending_erasures`)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, MetaData, PrimaryKeyConstraint, String, Table

from customer.domain import CARD_NUMBER_LENGTH, MAX_FAMILY_NAME_LENGTH, MAX_GIVEN_NAME_LENGTH
from storeplane_runtime.tables import NAMING

metadata = MetaData(naming_convention=NAMING)

customers = Table(
    "customers",
    metadata,
    Column("customer_id", String(36), primary_key=True),
    # Personal data (PII_COLUMNS): NULL once erased. Email lower case, phone E.164, card digits: the lookup keys.
    Column("given_name", String(MAX_GIVEN_NAME_LENGTH), nullable=True),
    Column("family_name", String(MAX_FAMILY_NAME_LENGTH), nullable=True),
    Column("email", String(254), nullable=True, unique=True),  # uq_customers_email
    Column("phone", String(16), nullable=True, unique=True),  # uq_customers_phone
    Column("loyalty_card_number", String(CARD_NUMBER_LENGTH), nullable=True, unique=True),  # uq_customers_..._number
    Column("home_store_id", String(64), nullable=True),
    Column("marketing_email", Boolean, nullable=False, default=False),
    Column("marketing_email_at", DateTime(timezone=True), nullable=True),
    Column("marketing_sms", Boolean, nullable=False, default=False),
    Column("marketing_sms_at", DateTime(timezone=True), nullable=True),
    # Bookkeeping and statistics: kept in the tombstone.
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=True),
    Column("sale_count", BigInteger, nullable=False, default=0),
    Column("return_count", BigInteger, nullable=False, default=0),
    Column("last_purchase_at", DateTime(timezone=True), nullable=True),
    Column("last_purchase_store_id", String(64), nullable=True),
)
# ExportCustomers' keyset order.
Index("ix_customers_updated_at", customers.c.updated_at, customers.c.customer_id)

# Money spent minus refunded, per customer and currency (minor units).
customer_spend = Table(
    "customer_spend",
    metadata,
    Column("customer_id", String(36), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    PrimaryKeyConstraint("customer_id", "currency"),
)

# Every card number ever issued or accepted, as a SHA-256 hash with no link to a customer: a number is never given to
# a second customer, even after its first holder was erased (the hash, not the number, so that a dump of this table
# is not a list of card numbers; it blocks reuse and identifies nobody by itself).
issued_cards = Table(
    "issued_cards",
    metadata,
    Column("card_hash", String(64), primary_key=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

# Sales and returns already counted, by their own id: a replay under a new event id changes nothing either.
applied_documents = Table(
    "applied_documents",
    metadata,
    Column("kind", String(16), nullable=False),
    Column("document_id", String(128), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("kind", "document_id"),
)

# Which stored answers (the kit's idempotency keys) show which customer: the RegisterCustomer and UpdateCustomer calls
# that wrote one. Erasure rewrites those answers to the tombstone and drops the customer's records; the rest go when
# their keys would (idempotency.RETENTION).
customer_requests = Table(
    "customer_requests",
    metadata,
    Column("caller", String(200), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("customer_id", String(36), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    PrimaryKeyConstraint("caller", "request_id"),
)

# Customers erased while events about them (which carry the card number) may still be unsent: the erasure sweeper
# deletes those events from the outbox once sent, then the row.
pending_erasures = Table(
    "pending_erasures",
    metadata,
    Column("customer_id", String(36), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
)

# Where personal data lives: table -> columns. Erasure NULLs all of them.
PII_COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": ("given_name", "family_name", "email", "phone", "loyalty_card_number", "home_store_id"),
}

# The unique constraint -> the profile field it keeps unique (how a unique violation becomes its reason).
UNIQUE_KEYS = {
    "uq_customers_email": "email",
    "uq_customers_phone": "phone",
    "uq_customers_loyalty_card_number": "loyalty_card_number",
    "pk_issued_cards": "loyalty_card_number",
}
