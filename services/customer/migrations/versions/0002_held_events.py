"""Held events: what the in-process bus's consumer keeps waiting for a retry or parked, across restarts.

Revision ID: 0002
Revises: 0001
"""

from storeplane_runtime.migrations import create_held_events_table, drop_held_events_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_held_events_table()


def downgrade() -> None:
    drop_held_events_table()
