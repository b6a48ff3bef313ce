"""Items, barcodes, stock levels, reservations, adjustments, discrepancies, applied sales and returns.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tax_class", sa.String(32), nullable=False),
        sa.Column("barcodes", sa.JSON, nullable=False),
        sa.Column("prices", sa.JSON, nullable=False),
        sa.Column("reorder_point", sa.BigInteger, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sku", name="pk_items"),
    )
    op.create_table(
        "item_barcodes",
        sa.Column("barcode", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("barcode", name="pk_item_barcodes"),
    )
    op.create_index("ix_item_barcodes_sku", "item_barcodes", ["sku"])
    op.create_table(
        "stock_levels",
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("on_hand", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("store_id", "sku", name="pk_stock_levels"),
    )
    op.create_table(
        "reservations",
        sa.Column("reservation_id", sa.String(128), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lines", sa.JSON, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("reservation_id", name="pk_reservations"),
    )
    op.create_index("ix_reservations_active_expiry", "reservations", ["state", "expires_at"])
    op.create_table(
        "stock_adjustments",
        sa.Column("id", _Id, nullable=False, autoincrement=True),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("delta", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("caller", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stock_adjustments"),
    )
    op.create_table(
        "stock_discrepancies",
        sa.Column("id", _Id, nullable=False, autoincrement=True),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("on_hand_after", sa.BigInteger, nullable=False),
        sa.Column("reference_id", sa.String(128), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stock_discrepancies"),
    )
    op.create_table(
        "applied_documents",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("document_id", sa.String(128), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "document_id", name="pk_applied_documents"),
    )


def downgrade() -> None:
    for table in (
        "applied_documents",
        "stock_discrepancies",
        "stock_adjustments",
        "reservations",
        "stock_levels",
        "item_barcodes",
        "items",
    ):
        op.drop_table(table)
