"""storage commitment

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 01:52:25.514273
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_commitments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_commitments")),
        sa.UniqueConstraint(
            "sop_instance_uid", "peer", name=op.f("uq_instance_commitments_sop_instance_uid_peer")
        ),
    )
    with op.batch_alter_table("instance_commitments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_instance_commitments_sop_instance_uid"),
            ["sop_instance_uid"],
            unique=False,
        )

    op.create_table(
        "commit_transactions",
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("peer_ae_title", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_type", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_commit_transactions_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("transaction_uid", name=op.f("pk_commit_transactions")),
    )
    with op.batch_alter_table("commit_transactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commit_transactions_job_id"), ["job_id"], unique=False)

    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transaction_uid", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_job_items_transaction_uid"), ["transaction_uid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_items_transaction_uid"))
        batch_op.drop_column("transaction_uid")

    with op.batch_alter_table("commit_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commit_transactions_job_id"))

    op.drop_table("commit_transactions")
    with op.batch_alter_table("instance_commitments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_commitments_sop_instance_uid"))

    op.drop_table("instance_commitments")
