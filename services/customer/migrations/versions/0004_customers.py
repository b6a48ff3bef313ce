"""Customers, their spend per currency, issued card numbers, applied sales and returns, the requests that showed a
customer, erasures whose events are not all sent yet.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(36), nullable=False),
        sa.Column("given_name", sa.String(100), nullable=True),
        sa.Column("family_name", sa.String(100), nullable=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("phone", sa.String(16), nullable=True),
        sa.Column("loyalty_card_number", sa.String(13), nullable=True),
        sa.Column("home_store_id", sa.String(64), nullable=True),
        sa.Column("marketing_email", sa.Boolean, nullable=False),
        sa.Column("marketing_email_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("marketing_sms", sa.Boolean, nullable=False),
        sa.Column("marketing_sms_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sale_count", sa.BigInteger, nullable=False),
        sa.Column("return_count", sa.BigInteger, nullable=False),
        sa.Column("last_purchase_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_purchase_store_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", name="pk_customers"),
        sa.UniqueConstraint("email", name="uq_customers_email"),
        sa.UniqueConstraint("phone", name="uq_customers_phone"),
        sa.UniqueConstraint("loyalty_card_number", name="uq_customers_loyalty_card_number"),
    )
    op.create_index("ix_customers_updated_at", "customers", ["updated_at", "customer_id"])
    op.create_table(
        "customer_spend",
        sa.Column("customer_id", sa.String(36), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "currency", name="pk_customer_spend"),
    )
    op.create_table(
        "issued_cards",
        sa.Column("card_hash", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("card_hash", name="pk_issued_cards"),
    )
    op.create_table(
        "applied_documents",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("document_id", sa.String(128), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "document_id", name="pk_applied_documents"),
    )
    op.create_table(
        "customer_requests",
        sa.Column("caller", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("caller", "request_id", name="pk_customer_requests"),
    )
    op.create_index("ix_customer_requests_customer_id", "customer_requests", ["customer_id"])
    op.create_index("ix_customer_requests_created_at", "customer_requests", ["created_at"])
    op.create_table(
        "pending_erasures",
        sa.Column("customer_id", sa.String(36), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_pending_erasures"),
    )


def downgrade() -> None:
    op.drop_table("pending_erasures")
    op.drop_index("ix_customer_requests_created_at", table_name="customer_requests")
    op.drop_index("ix_customer_requests_customer_id", table_name="customer_requests")
    op.drop_table("customer_requests")
    op.drop_table("applied_documents")
    op.drop_table("issued_cards")
    op.drop_table("customer_spend")
    op.drop_index("ix_customers_updated_at", table_name="customers")
    op.drop_table("customers")
