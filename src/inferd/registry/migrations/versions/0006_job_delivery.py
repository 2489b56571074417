"""Async predictions get webhooks, leases, progress and results kept in the artifact store;
webhook deliveries and each user's signing secret.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 00:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(32)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("api", sa.String(32), nullable=False, server_default="v2"))
        batch.add_column(sa.Column("webhook", sa.String(), nullable=True))
        batch.add_column(sa.Column("webhook_events", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("node", sa.String(64), nullable=True))
        batch.add_column(_ts("lease_until", nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("result_ref", sa.String(), nullable=True))
        batch.create_index("ix_jobs_status_lease_until", ["status", "lease_until"])
        batch.create_index("ix_jobs_finished_at", ["finished_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", ID, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("owner_id", ID, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        _ts("next_at"),
        _ts("created_at"),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_status_next_at", "webhook_deliveries",
                    ["status", "next_at"])  # fmt: skip
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_table(
        "webhook_secrets",
        sa.Column("owner_id", ID, nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous", sa.Text(), nullable=True),
        _ts("previous_until", nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("owner_id", name="pk_webhook_secrets"),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    op.drop_index("ix_webhook_deliveries_job_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_status_next_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_finished_at")
        batch.drop_index("ix_jobs_status_lease_until")
        batch.drop_column("result_ref")
        batch.drop_column("progress")
        batch.drop_column("lease_until")
        batch.drop_column("node")
        batch.drop_column("webhook_events")
        batch.drop_column("webhook")
        batch.drop_column("api")
