"""Versions record the runtime they were validated with.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("runtime", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("runtime")
