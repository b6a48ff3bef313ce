"""Accounts, ledger entries, expiry lots, holds, booked sales, returns and tier spend.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_At = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=True),
        sa.Column("card_number", sa.String(64), nullable=True),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("held_points", sa.BigInteger, nullable=False),
        sa.Column("tier", sa.String(8), nullable=False),
        sa.Column("registered", sa.Boolean, nullable=False),
        sa.Column("anonymised", sa.Boolean, nullable=False),
        sa.Column("created_at", _At, nullable=False),
        sa.Column("tier_checked_at", _At, nullable=False),
        sa.Column("erased_at", _At, nullable=True),
        sa.Column("entry_count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", name="pk_accounts"),
        sa.UniqueConstraint("customer_id", name="uq_accounts_customer_id"),
        sa.UniqueConstraint("card_number", name="uq_accounts_card_number"),
    )
    op.create_index("ix_accounts_tier_checked_at", "accounts", ["tier", "tier_checked_at"])
    op.create_table(
        "ledger_entries",
        sa.Column("entry_id", sa.String(36), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("balance_after", sa.BigInteger, nullable=False),
        sa.Column("sale_id", sa.String(128), nullable=False),
        sa.Column("return_id", sa.String(128), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("occurred_at", _At, nullable=False),
        sa.Column("expires_at", _At, nullable=True),
        sa.Column("adjustment_reason", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("lot_id", sa.BigInteger, nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("entry_id", name="pk_ledger_entries"),
        sa.UniqueConstraint("account_id", "seq", name="uq_ledger_entries_account_id"),
        sa.UniqueConstraint("lot_id", name="uq_ledger_entries_lot_id"),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id", "occurred_at", "entry_id"])
    op.create_table(
        "lots",
        sa.Column("lot_id", _Id, nullable=False, autoincrement=True),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("entry_id", sa.String(36), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("remaining", sa.BigInteger, nullable=False),
        sa.Column("expires_at", _At, nullable=False),
        sa.PrimaryKeyConstraint("lot_id", name="pk_lots"),
    )
    op.create_index("ix_lots_account_id", "lots", ["account_id", "expires_at"])
    op.create_index("ix_lots_expires_at", "lots", ["expires_at"], postgresql_where=sa.text("remaining > 0"))
    op.create_table(
        "holds",
        sa.Column("hold_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("expires_at", _At, nullable=True),
        sa.Column("updated_at", _At, nullable=False),
        sa.PrimaryKeyConstraint("hold_id", name="pk_holds"),
    )
    op.create_index("ix_holds_account_id", "holds", ["account_id"])
    op.create_index("ix_holds_state", "holds", ["state", "expires_at"])
    op.create_table(
        "sales",
        sa.Column("sale_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("amount_paid", sa.BigInteger, nullable=False),
        sa.Column("points_earned", sa.BigInteger, nullable=False),
        sa.Column("completed_at", _At, nullable=False),
        sa.Column("lines", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("sale_id", name="pk_sales"),
    )
    op.create_index("ix_sales_account_id", "sales", ["account_id"])
    op.create_table(
        "sale_returns",
        sa.Column("return_id", sa.String(128), nullable=False),
        sa.Column("sale_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger, nullable=False),
        sa.Column("points_returned", sa.BigInteger, nullable=False),
        sa.Column("lines", sa.JSON, nullable=False),
        sa.Column("returned_at", _At, nullable=False),
        sa.PrimaryKeyConstraint("return_id", name="pk_sale_returns"),
    )
    op.create_index("ix_sale_returns_sale_id", "sale_returns", ["sale_id", "state"])
    op.create_table(
        "spend",
        sa.Column("id", _Id, nullable=False, autoincrement=True),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("reference_id", sa.String(128), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("counted_at", _At, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_spend"),
        sa.UniqueConstraint("reference_id", "account_id", name="uq_spend_reference_id"),
    )
    op.create_index("ix_spend_account_id", "spend", ["account_id", "counted_at"])


def downgrade() -> None:
    for table in ("spend", "sale_returns", "sales", "holds", "lots", "ledger_entries", "accounts"):
        op.drop_table(table)
