"""routes and routing decisions (issue 14)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 19:20:00.000000

``route_matches``: one row per instance and destination a route decided to forward it to,
written at ingest with the instance's row. Indexed only where the forwarder looks rows up
(state and node) and by the unique instance and destination (a study's rows are found through
``instances``): every index is a write on the receive path.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_matches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("stable_after", sa.Float(), nullable=False),
        sa.Column("commit", sa.Boolean(), nullable=False),
        sa.Column("node_name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_matches")),
        sa.UniqueConstraint(
            "sop_instance_uid",
            "destination",
            name=op.f("uq_route_matches_sop_instance_uid_destination"),
        ),
    )
    with op.batch_alter_table("route_matches", schema=None) as batch_op:
        batch_op.create_index("ix_route_matches_state_node", ["state", "node_name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("route_matches", schema=None) as batch_op:
        batch_op.drop_index("ix_route_matches_state_node")
    op.drop_table("route_matches")
