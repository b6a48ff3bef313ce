"""Checkout's own tables: item cache, baskets, receipt counters, sales, returns, offline quarantine.

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
_When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "checkout_items",
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tax_class", sa.String(32), nullable=False),
        sa.Column("prices", sa.JSON, nullable=False),
        sa.Column("barcodes", sa.JSON, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _When, nullable=False),
        sa.PrimaryKeyConstraint("sku", name="pk_checkout_items"),
    )
    op.create_table(
        "checkout_item_barcodes",
        sa.Column("barcode", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("barcode", name="pk_checkout_item_barcodes"),
    )
    op.create_index("ix_checkout_item_barcodes_sku", "checkout_item_barcodes", ["sku"])
    op.create_table(
        "baskets",
        sa.Column("basket_id", sa.String(36), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("cashier_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("tax_inclusive", sa.Boolean, nullable=False),
        sa.Column("lines", sa.JSON, nullable=False),
        sa.Column("next_line", sa.Integer, nullable=False),
        sa.Column("customer", sa.JSON, nullable=True),
        sa.Column("points_redeemed", sa.BigInteger, nullable=False),
        sa.Column("sale_id", sa.String(36), nullable=False),
        sa.Column("reserve_tried", sa.Boolean, nullable=False),
        sa.Column("hold_tried", sa.Boolean, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("opened_at", _When, nullable=False),
        sa.Column("expires_at", _When, nullable=False),
        sa.Column("updated_at", _When, nullable=False),
        sa.PrimaryKeyConstraint("basket_id", name="pk_baskets"),
    )
    op.create_index("ix_baskets_state_expires_at", "baskets", ["state", "expires_at"])
    op.create_table(
        "receipt_counters",
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(1), nullable=False),
        sa.Column("last_number", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("store_id", "terminal_id", "kind", name="pk_receipt_counters"),
    )
    op.create_table(
        "sales",
        sa.Column("sale_id", sa.String(36), nullable=False),
        sa.Column("basket_id", sa.String(36), nullable=True),
        sa.Column("client_sale_id", sa.String(64), nullable=True),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("cashier_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("tax_inclusive", sa.Boolean, nullable=False),
        sa.Column("lines", sa.JSON, nullable=False),
        sa.Column("tenders", sa.JSON, nullable=False),
        sa.Column("subtotal", sa.BigInteger, nullable=False),
        sa.Column("discount_total", sa.BigInteger, nullable=False),
        sa.Column("tax_total", sa.BigInteger, nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("points_redeemed", sa.BigInteger, nullable=False),
        sa.Column("cash_rounding", sa.BigInteger, nullable=False),
        sa.Column("amount_paid", sa.BigInteger, nullable=False),
        sa.Column("change_due", sa.BigInteger, nullable=False),
        sa.Column("cash_increment", sa.Integer, nullable=False),
        sa.Column("completed_at", _When, nullable=False),
        sa.Column("offline", sa.Boolean, nullable=False),
        sa.Column("receipt_number", sa.String(200), nullable=False),
        sa.Column("receipt_lines", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("sale_id", name="pk_sales"),
        sa.UniqueConstraint("basket_id", name="uq_sales_basket_id"),
        sa.UniqueConstraint("client_sale_id", name="uq_sales_client_sale_id"),
        sa.UniqueConstraint("receipt_number", name="uq_sales_receipt_number"),
    )
    op.create_index("ix_sales_store_id", "sales", ["store_id", "completed_at", "sale_id"])
    op.create_index("ix_sales_customer_id", "sales", ["customer_id", "completed_at"])
    op.create_table(
        "sale_returns",
        sa.Column("return_id", sa.String(36), nullable=False),
        sa.Column("original_sale_id", sa.String(36), nullable=False),
        sa.Column("original_store_id", sa.String(64), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("cashier_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("lines", sa.JSON, nullable=False),
        sa.Column("refund_tenders", sa.JSON, nullable=False),
        sa.Column("amount_refunded", sa.BigInteger, nullable=False),
        sa.Column("cash_rounding", sa.BigInteger, nullable=False),
        sa.Column("points_returned", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("returned_at", _When, nullable=False),
        sa.Column("receipt_number", sa.String(200), nullable=False),
        sa.Column("receipt_lines", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("return_id", name="pk_sale_returns"),
        sa.UniqueConstraint("receipt_number", name="uq_sale_returns_receipt_number"),
    )
    op.create_index("ix_sale_returns_original_sale_id", "sale_returns", ["original_sale_id"])
    op.create_table(
        "offline_quarantine",
        sa.Column("id", _Id, nullable=False, autoincrement=True),
        sa.Column("client_sale_id", sa.String(200), nullable=False),
        sa.Column("store_id", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("sale", sa.LargeBinary, nullable=False),
        sa.Column("caller", sa.String(200), nullable=False),
        sa.Column("received_at", _When, nullable=False),
        sa.Column("resolved_at", _When, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_offline_quarantine"),
    )
    op.create_index("ix_offline_quarantine_client_sale_id", "offline_quarantine", ["client_sale_id"])


def downgrade() -> None:
    op.drop_index("ix_offline_quarantine_client_sale_id", table_name="offline_quarantine")
    op.drop_table("offline_quarantine")
    op.drop_index("ix_sale_returns_original_sale_id", table_name="sale_returns")
    op.drop_table("sale_returns")
    op.drop_index("ix_sales_customer_id", table_name="sales")
    op.drop_index("ix_sales_store_id", table_name="sales")
    op.drop_table("sales")
    op.drop_table("receipt_counters")
    op.drop_index("ix_baskets_state_expires_at", table_name="baskets")
    op.drop_table("baskets")
    op.drop_index("ix_checkout_item_barcodes_sku", table_name="checkout_item_barcodes")
    op.drop_table("checkout_item_barcodes")
    op.drop_table("checkout_items")
