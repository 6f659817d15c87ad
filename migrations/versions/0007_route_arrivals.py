"""routing decisions written at ingest as one row per instance (issue 14)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 10:00:00.000000

``route_arrivals``: one row per routed instance, inserted with the instance's row, holding all
its decisions (a JSON list of [route, destination, trigger, stable_after, commit]). Indexed by
its integer key only: each ingest appends to one B-tree instead of inserting into three per
destination (``route_matches``: primary key, unique instance and destination, state and node).
The forwarder expands the rows into ``route_matches`` off the receive path.

Downgrading expands what is left into ``route_matches`` first (as the forwarder would), so no
decision is lost.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_arrivals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("node_name", sa.String(length=64), nullable=False),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decisions", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_arrivals")),
    )


def downgrade() -> None:
    bind = op.get_bind()
    # Untyped columns: values go back as they were stored (timestamps included).
    arrivals = sa.table(
        "route_arrivals",
        *(
            sa.column(name)
            for name in (
                "sop_instance_uid",
                "study_instance_uid",
                "series_instance_uid",
                "node_name",
                "matched_at",
                "decisions",
            )
        ),
    )
    matches = sa.table("route_matches", sa.column("sop_instance_uid"), sa.column("destination"))
    arriving = sa.select(arrivals.c.sop_instance_uid)
    there = {
        (uid, dest)
        for uid, dest in bind.execute(
            sa.select(matches).where(matches.c.sop_instance_uid.in_(arriving))
        )
    }
    rows = []
    for arrival in bind.execute(sa.select(arrivals)).mappings():
        for route, destination, trigger, stable_after, commit in json.loads(arrival["decisions"]):
            key = (arrival["sop_instance_uid"], destination)
            if key in there:
                continue
            there.add(key)
            rows.append(
                {
                    "route": route,
                    "destination": destination,
                    "sop_instance_uid": arrival["sop_instance_uid"],
                    "study_instance_uid": arrival["study_instance_uid"],
                    "series_instance_uid": arrival["series_instance_uid"],
                    "trigger": trigger,
                    "stable_after": float(stable_after),
                    "commit": bool(commit),
                    "node_name": arrival["node_name"],
                    "state": "pending",
                    "matched_at": arrival["matched_at"],
                    "updated_at": arrival["matched_at"],
                }
            )
    if rows:
        bind.execute(sa.insert(sa.table("route_matches", *map(sa.column, rows[0]))), rows)
    op.drop_table("route_arrivals")
