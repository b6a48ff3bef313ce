"""The stock service's tables (the migrations create them) and the helpers every query module shares."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from storeplane_runtime.tables import ID, NAMING

metadata = MetaData(naming_convention=NAMING)

items = Table(
    "items",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("tax_class", String(32), nullable=False),
    Column("barcodes", JSON, nullable=False),  # list, as imported; item_barcodes is the lookup
    Column("prices", JSON, nullable=False),  # {"EUR": 1299, ...} in minor units
    Column("reorder_point", BigInteger, nullable=True),
    Column("revision", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

item_barcodes = Table(
    "item_barcodes",
    metadata,
    Column("barcode", String(64), primary_key=True),
    Column("sku", String(64), nullable=False, index=True),
)

stock_levels = Table(
    "stock_levels",
    metadata,
    Column("store_id", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("store_id", "sku"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("reservation_id", String(128), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    # [[sku, requested, reserved], ...]: always read and replaced as a whole (Reserve is declarative).
    Column("lines", JSON, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_reservations_active_expiry", reservations.c.state, reservations.c.expires_at)

stock_adjustments = Table(
    "stock_adjustments",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("store_id", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("caller", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Facts stock accepted although they looked wrong: stock going below zero, sales of SKUs it does not know.
stock_discrepancies = Table(
    "stock_discrepancies",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("store_id", String(64), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # NEGATIVE_ON_HAND, UNKNOWN_SKU
    Column("quantity", BigInteger, nullable=False),
    Column("on_hand_after", BigInteger, nullable=False),
    Column("reference_id", String(128), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

# Sales and returns already applied, by their own id: a replay under a new event id changes nothing either.
applied_documents = Table(
    "applied_documents",
    metadata,
    Column("kind", String(16), nullable=False),
    Column("document_id", String(128), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("kind", "document_id"),
)
