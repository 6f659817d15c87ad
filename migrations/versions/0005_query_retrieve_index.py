"""query/retrieve index columns (issue 15)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 19:20:00.000000

The keys a C-FIND SCP answers beyond what the index held: nullable, so existing rows stay valid;
``index_version`` is NULL for them until ``ctnode db upgrade`` has read their files again
(``storage.backfill``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS: list[tuple[str, sa.types.TypeEngine[object]]] = [
    ("patient_birth_date", sa.String(length=8)),
    ("patient_sex", sa.String(length=16)),
    ("study_id", sa.String(length=16)),
    ("referring_physician_name", sa.String(length=324)),
    ("body_part_examined", sa.String(length=16)),
    ("series_date", sa.String(length=8)),
    ("series_time", sa.String(length=16)),
    ("rows", sa.Integer()),
    ("columns", sa.Integer()),
    ("number_of_frames", sa.Integer()),
    ("index_version", sa.Integer()),
]


def upgrade() -> None:
    for name, type_ in _COLUMNS:
        op.add_column("instances", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
