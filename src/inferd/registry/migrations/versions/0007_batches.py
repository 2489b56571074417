"""Batch jobs: the files table (uploads and batch outputs) and the batch_jobs table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(32)
BATCH_ID = sa.String(64)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", BATCH_ID, nullable=False),
        sa.Column("owner_id", ID, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("batch_id", BATCH_ID, nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
    )
    op.create_index("ix_files_owner_id_created_at", "files", ["owner_id", "created_at"])
    op.create_table(
        "batch_jobs",
        sa.Column("id", BATCH_ID, nullable=False),
        sa.Column("owner_id", ID, nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("api", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", BATCH_ID, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("openai", sa.Boolean(), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("chunk_rows", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("committed", sa.Integer(), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("error_bytes", sa.BigInteger(), nullable=False),
        sa.Column("output_file_id", BATCH_ID, nullable=True),
        sa.Column("error_file_id", BATCH_ID, nullable=True),
        sa.Column("node", sa.String(64), nullable=True),
        _ts("lease_until", nullable=True),
        _ts("run_started_at", nullable=True),
        sa.Column("run_start_done", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("in_progress_at", nullable=True),
        _ts("finalizing_at", nullable=True),
        _ts("completed_at", nullable=True),
        _ts("failed_at", nullable=True),
        _ts("cancelling_at", nullable=True),
        _ts("cancelled_at", nullable=True),
        _ts("expires_at", nullable=True),
        _ts("expired_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batch_jobs"),
    )
    op.create_index("ix_batch_jobs_owner_id_created_at", "batch_jobs", ["owner_id", "created_at"])
    op.create_index("ix_batch_jobs_status_lease_until", "batch_jobs", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_batch_jobs_status_lease_until", table_name="batch_jobs")
    op.drop_index("ix_batch_jobs_owner_id_created_at", table_name="batch_jobs")
    op.drop_table("batch_jobs")
    op.drop_index("ix_files_owner_id_created_at", table_name="files")
    op.drop_table("files")
