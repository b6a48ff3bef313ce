"""The index the pruner deletes old inbox rows by.

Revision ID: 0003
Revises: 0002
"""

from storeplane_runtime.migrations import create_inbox_pruning_index, drop_inbox_pruning_index

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_inbox_pruning_index()


def downgrade() -> None:
    drop_inbox_pruning_index()
