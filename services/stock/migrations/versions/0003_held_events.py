"""Held events: what the in-process bus's consumer keeps waiting for a retry or parked, across restarts.

Revision ID: 0003
Revises: 0002
"""

from storeplane_runtime.migrations import create_held_events_table, drop_held_events_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_held_events_table()


def downgrade() -> None:
    drop_held_events_table()
