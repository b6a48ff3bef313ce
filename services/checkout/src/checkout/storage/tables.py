"""The checkout service's tables (migrations/versions/0004_checkout.py creates them).

Personal data: a customer id is all a sale or return keeps. An open basket also shows the customer's display name and
loyalty card (a till needs them); both are dropped when the basket leaves OPEN.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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

from storeplane_runtime.tables import ID, NAMING

metadata = MetaData(naming_convention=NAMING)

# Checkout's own copy of stock's items, fed by ItemUpdated (and by stock.GetItem on a miss); the highest revision wins.
items = Table(
    "checkout_items",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("tax_class", String(32), nullable=False),
    Column("prices", JSON, nullable=False),  # {"EUR": 1299, ...} minor units at price level
    Column("barcodes", JSON, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

item_barcodes = Table(
    "checkout_item_barcodes",
    metadata,
    Column("barcode", String(64), primary_key=True),
    Column("sku", String(64), nullable=False, index=True),
)

baskets = Table(
    "baskets",
    metadata,
    Column("basket_id", String(36), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("terminal_id", String(64), nullable=False),
    Column("cashier_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("tax_inclusive", Boolean, nullable=False),
    Column("lines", JSON, nullable=False),  # read and replaced as a whole, under the row's lock
    Column("next_line", Integer, nullable=False),
    Column("customer", JSON, nullable=True),
    Column("points_redeemed", BigInteger, nullable=False),
    Column("sale_id", String(36), nullable=False),
    Column("reserve_tried", Boolean, nullable=False),
    Column("hold_tried", Boolean, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_baskets_state_expires_at", baskets.c.state, baskets.c.expires_at)

# The last receipt number of each terminal, per kind (S: sales, R: returns): taken in the transaction that records the
# sale, so numbers are gap-free and unique however many tills share a terminal id.
receipt_counters = Table(
    "receipt_counters",
    metadata,
    Column("store_id", String(64), nullable=False),
    Column("terminal_id", String(64), nullable=False),
    Column("kind", String(1), nullable=False),
    Column("last_number", BigInteger, nullable=False),
    PrimaryKeyConstraint("store_id", "terminal_id", "kind"),
)

sales = Table(
    "sales",
    metadata,
    Column("sale_id", String(36), primary_key=True),
    Column("basket_id", String(36), nullable=True),
    Column("client_sale_id", String(64), nullable=True),
    Column("store_id", String(64), nullable=False),
    Column("terminal_id", String(64), nullable=False),
    Column("cashier_id", String(64), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("tax_inclusive", Boolean, nullable=False),
    Column("lines", JSON, nullable=False),  # with returned quantities, changed under the row's lock
    Column("tenders", JSON, nullable=False),
    Column("subtotal", BigInteger, nullable=False),
    Column("discount_total", BigInteger, nullable=False),
    Column("tax_total", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("points_redeemed", BigInteger, nullable=False),
    Column("cash_rounding", BigInteger, nullable=False),
    Column("amount_paid", BigInteger, nullable=False),
    Column("change_due", BigInteger, nullable=False),
    Column("cash_increment", Integer, nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=False),
    Column("offline", Boolean, nullable=False),
    Column("receipt_number", String(200), nullable=False),
    Column("receipt_lines", JSON, nullable=False),
)
Index("ix_sales_store_id", sales.c.store_id, sales.c.completed_at, sales.c.sale_id)
Index("ix_sales_customer_id", sales.c.customer_id, sales.c.completed_at)

sale_returns = Table(
    "sale_returns",
    metadata,
    Column("return_id", String(36), primary_key=True),
    Column("original_sale_id", String(36), nullable=False, index=True),
    Column("original_store_id", String(64), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("terminal_id", String(64), nullable=False),
    Column("cashier_id", String(64), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("lines", JSON, nullable=False),
    Column("refund_tenders", JSON, nullable=False),
    Column("amount_refunded", BigInteger, nullable=False),
    Column("cash_rounding", BigInteger, nullable=False),
    Column("points_returned", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("returned_at", DateTime(timezone=True), nullable=False),
    Column("receipt_number", String(200), nullable=False),
    Column("receipt_lines", JSON, nullable=False),
)

# Offline sales that could not be recorded, kept as sent (nothing a store sends is lost) until an operator re-submits
# them.
offline_quarantine = Table(
    "offline_quarantine",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("client_sale_id", String(200), nullable=False, index=True),
    Column("store_id", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("sale", LargeBinary, nullable=False),  # the OfflineSale message as uploaded
    Column("caller", String(200), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
)
