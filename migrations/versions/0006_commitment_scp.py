"""incoming storage commitment transactions (issue 16)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 19:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incoming_commitments",
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("peer_address", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("upstream", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_type", sa.Integer(), nullable=True),
        sa.Column("report_job_id", sa.Integer(), nullable=True),
        sa.Column("report_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("transaction_uid", name=op.f("pk_incoming_commitments")),
    )
    with op.batch_alter_table("incoming_commitments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_incoming_commitments_peer"), ["peer"], unique=False)
        batch_op.create_index(batch_op.f("ix_incoming_commitments_state"), ["state"], unique=False)

    op.create_table(
        "incoming_commitment_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["transaction_uid"],
            ["incoming_commitments.transaction_uid"],
            name=op.f("fk_incoming_commitment_items_transaction_uid_incoming_commitments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incoming_commitment_items")),
    )
    with op.batch_alter_table("incoming_commitment_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incoming_commitment_items_transaction_uid"),
            ["transaction_uid"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_incoming_commitment_items_sop_instance_uid"),
            ["sop_instance_uid"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("incoming_commitment_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_incoming_commitment_items_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_incoming_commitment_items_transaction_uid"))
    op.drop_table("incoming_commitment_items")
    with op.batch_alter_table("incoming_commitments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_incoming_commitments_state"))
        batch_op.drop_index(batch_op.f("ix_incoming_commitments_peer"))
    op.drop_table("incoming_commitments")
