"""The loyalty service's tables (migrations/versions/0004_loyalty.py creates them)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from storeplane_runtime.tables import ID, NAMING

metadata = MetaData(naming_convention=NAMING)

# One row per customer (and/or card). `balance` and `held_points` are the sums of the ledger entries and of the
# active holds, kept in the same transaction as those; every write touching them locks this row first.
accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("customer_id", String(128), nullable=True, unique=True),
    Column("card_number", String(64), nullable=True, unique=True),
    Column("balance", BigInteger, nullable=False),
    Column("held_points", BigInteger, nullable=False),
    Column("tier", String(8), nullable=False),
    Column("registered", Boolean, nullable=False),
    Column("anonymised", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("tier_checked_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=True),
    Column("entry_count", BigInteger, nullable=False),  # entries written: the next one's `seq`
)
Index("ix_accounts_tier_checked_at", accounts.c.tier, accounts.c.tier_checked_at)

# The append-only ledger. `lot_id` is set on EXPIRE entries (unique: no lot expires twice).
entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", String(36), primary_key=True),
    Column("account_id", String(36), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("sale_id", String(128), nullable=False),
    Column("return_id", String(128), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("adjustment_reason", String(16), nullable=False),
    Column("note", Text, nullable=False),
    Column("lot_id", BigInteger, nullable=True, unique=True),
    Column("seq", BigInteger, nullable=False),  # 1, 2, 3... per account, in the order written
    UniqueConstraint("account_id", "seq", name="uq_ledger_entries_account_id"),
)
Index("ix_ledger_entries_account_id", entries.c.account_id, entries.c.occurred_at, entries.c.entry_id)

# Credits not yet spent or expired (see domain/ledger.py for how debt is kept out of them).
lots = Table(
    "lots",
    metadata,
    Column("lot_id", ID, primary_key=True, autoincrement=True),
    Column("account_id", String(36), nullable=False),
    Column("entry_id", String(36), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
Index("ix_lots_account_id", lots.c.account_id, lots.c.expires_at)
Index("ix_lots_expires_at", lots.c.expires_at, postgresql_where=lots.c.remaining > 0)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", String(128), primary_key=True),
    Column("account_id", String(36), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_holds_account_id", holds.c.account_id)
Index("ix_holds_state", holds.c.state, holds.c.expires_at)

# What loyalty remembers of each sale it booked: the points each line earned and what returns took back.
sales = Table(
    "sales",
    metadata,
    Column("sale_id", String(128), primary_key=True),
    Column("account_id", String(36), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("amount_paid", BigInteger, nullable=False),
    Column("points_earned", BigInteger, nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=False),
    Column("lines", JSON, nullable=False),  # [[line_id, quantity, points, returned, clawed_back], ...]
)
Index("ix_sales_account_id", sales.c.account_id)

# Every return seen, by id: PENDING until its sale is booked, then APPLIED. No customer data is kept here.
returns = Table(
    "sale_returns",
    metadata,
    Column("return_id", String(128), primary_key=True),
    Column("sale_id", String(128), nullable=False),
    Column("state", String(8), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("amount_refunded", BigInteger, nullable=False),
    Column("points_returned", BigInteger, nullable=False),
    Column("lines", JSON, nullable=False),  # [[line_id, quantity, points_returned], ...]
    Column("returned_at", DateTime(timezone=True), nullable=False),
)
Index("ix_sale_returns_sale_id", returns.c.sale_id, returns.c.state)

# Money counted towards tiers, dated at the sale (a refund is dated at its sale too, so it leaves the window with it).
spend = Table(
    "spend",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("account_id", String(36), nullable=False),
    Column("reference_id", String(128), nullable=False),
    Column("currency_code", String(3), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("counted_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("reference_id", "account_id", name="uq_spend_reference_id"),
)
Index("ix_spend_account_id", spend.c.account_id, spend.c.counted_at)

ACCOUNT_TABLES = (lots, holds, sales, spend)  # rows that follow an account when two are merged
