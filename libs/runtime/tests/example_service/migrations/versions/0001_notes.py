"""The kit's tables and the notes table.

Revision ID: 0001
Revises:
"""

from alembic import op
from notes.service import notes

from storeplane_runtime.migrations import (
    create_held_events_table,
    create_messaging_tables,
    drop_held_events_table,
    drop_messaging_tables,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables()
    create_held_events_table()
    notes.create(bind=op.get_bind())


def downgrade() -> None:
    notes.drop(bind=op.get_bind())
    drop_held_events_table()
    drop_messaging_tables()
