"""query/retrieve index columns (issue 15)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 19:20:00.000000
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
