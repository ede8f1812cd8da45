"""tasks and executions (group tasks, job relay, rollouts) with their history

Replaces group_tasks/device_tasks; their rows are carried over.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 05:00:00
"""

import uuid as uuidlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN = sa.text("state IN ('PENDING', 'RUNNING', 'PAUSED')")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", BigId, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("firmware_id", sa.Integer(), nullable=True),
        sa.Column("completion", sa.String(length=16), nullable=False),
        sa.Column("apply_policy", sa.String(length=16), nullable=False),
        sa.Column("retry_times", sa.Integer(), nullable=False),
        sa.Column("retry_interval", sa.Float(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("completion_seconds", sa.Float(), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("success_threshold", sa.Integer(), nullable=False),
        sa.Column("error_threshold", sa.Integer(), nullable=True),
        sa.Column("max_per_minute", sa.Integer(), nullable=True),
        sa.Column("window", sa.JSON(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name=op.f("fk_tasks_group_id_groups"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("uuid", name=op.f("uq_tasks_uuid")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_state"), ["state"], unique=False)
        batch_op.create_index(
            "uq_tasks_open_group",
            ["group_id"],
            unique=True,
            postgresql_where=OPEN,
            sqlite_where=OPEN,
        )
    op.create_table(
        "executions",
        sa.Column("id", BigId, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("task_id", BigId, nullable=False),
        sa.Column("device_uuid", sa.String(length=36), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=True),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("acked_at", sa.DateTime(), nullable=True),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_uuid"],
            ["devices.uuid"],
            name=op.f("fk_executions_device_uuid_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_executions_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
        sa.UniqueConstraint("message_id", name=op.f("uq_executions_message_id")),
        sa.UniqueConstraint("uuid", name=op.f("uq_executions_uuid")),
    )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index("ix_executions_task_state", ["task_id", "state"], unique=False)
        batch_op.create_index("ix_executions_state_due", ["state", "due_at"], unique=False)
        batch_op.create_index("ix_executions_device_state", ["device_uuid", "state"], unique=False)
    op.create_table(
        "execution_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("execution_id", BigId, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_execution_events_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_events")),
    )
    with op.batch_alter_table("execution_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_execution_events_execution_id"), ["execution_id"], unique=False
        )
    _carry_over()
    with op.batch_alter_table("device_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_device_tasks_group_task_state")
        batch_op.drop_index(batch_op.f("ix_device_tasks_device_uuid"))
    op.drop_table("device_tasks")
    with op.batch_alter_table("group_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_tasks_state"))
        batch_op.drop_index(batch_op.f("ix_group_tasks_group_id"))
    op.drop_table("group_tasks")


def _carry_over() -> None:
    """Group tasks of 0001 become tasks of kind ``group``, their device records executions."""
    bind = op.get_bind()
    meta = sa.MetaData()
    old_tasks = sa.Table("group_tasks", meta, autoload_with=bind)
    old_records = sa.Table("device_tasks", meta, autoload_with=bind)
    tasks = sa.Table("tasks", meta, autoload_with=bind)
    executions = sa.Table("executions", meta, autoload_with=bind)
    ids: dict[str, int] = {}
    for t in bind.execute(sa.select(old_tasks)).mappings():
        payload = t["payload"] or {}
        result = bind.execute(
            tasks.insert().values(
                uuid=t["uuid"],
                kind="group",
                name="",
                group_id=t["group_id"],
                target={"groupId": t["group_id"]},
                payload=payload,
                completion="response",
                apply_policy=t["apply_policy"],
                retry_times=t["retry_times"],
                retry_interval=10.0,
                timeout_seconds=30.0,
                completion_seconds=0.0,
                scheduled_at=t["scheduled_at"],
                state=t["state"],
                revoked=t["revoked"],
                waves=[],
                current_wave=0,
                success_threshold=0,
                meta=t["meta"] or {},
                detail="",
                created_by="",
                created_at=t["created_at"],
                updated_at=t["updated_at"],
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        ids[t["uuid"]] = int(key[0])
    for r in bind.execute(sa.select(old_records)).mappings():
        bind.execute(
            executions.insert().values(
                uuid=r["uuid"],
                task_id=ids[r["group_task_uuid"]],
                device_uuid=r["device_uuid"],
                wave=0,
                state=r["state"],
                success=r["success"],
                revoked=r["revoked"],
                attempts=r["retries_done"],
                message_id=str(uuidlib.uuid4()),
                code=None,
                result=r["result"],
                detail="",
                created_at=r["created_at"],
                updated_at=r["updated_at"],
            )
        )


def downgrade() -> None:
    """Back to 0002's tables; group tasks and their records survive, relay jobs, rollouts and
    histories do not."""
    op.create_table(
        "group_tasks",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("apply_policy", sa.String(length=16), nullable=False),
        sa.Column("retry_times", sa.Integer(), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_tasks_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_group_tasks")),
    )
    with op.batch_alter_table("group_tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_group_tasks_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_group_tasks_state"), ["state"], unique=False)
    op.create_table(
        "device_tasks",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("group_task_uuid", sa.String(length=36), nullable=False),
        sa.Column("device_uuid", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("retries_done", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_uuid"],
            ["devices.uuid"],
            name=op.f("fk_device_tasks_device_uuid_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["group_task_uuid"],
            ["group_tasks.uuid"],
            name=op.f("fk_device_tasks_group_task_uuid_group_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_device_tasks")),
    )
    with op.batch_alter_table("device_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_device_tasks_device_uuid"), ["device_uuid"], unique=False
        )
        batch_op.create_index(
            "ix_device_tasks_group_task_state", ["group_task_uuid", "state"], unique=False
        )
    op.execute(
        "INSERT INTO group_tasks (uuid, group_id, payload, apply_policy, retry_times, "
        "scheduled_at, state, revoked, meta, created_at, updated_at) "
        "SELECT uuid, group_id, payload, apply_policy, retry_times, scheduled_at, state, "
        "revoked, meta, created_at, updated_at FROM tasks "
        "WHERE kind = 'group' AND group_id IS NOT NULL"
    )
    op.execute(
        "INSERT INTO device_tasks (uuid, group_task_uuid, device_uuid, state, success, revoked, "
        "retries_done, result, created_at, updated_at) "
        "SELECT e.uuid, t.uuid, e.device_uuid, e.state, e.success, e.revoked, e.attempts, "
        "e.result, e.created_at, e.updated_at FROM executions e JOIN tasks t ON t.id = e.task_id "
        "WHERE t.kind = 'group' AND t.group_id IS NOT NULL"
    )
    op.drop_table("execution_events")
    op.drop_table("executions")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("uq_tasks_open_group", sqlite_where=OPEN, postgresql_where=OPEN)
        batch_op.drop_index(batch_op.f("ix_tasks_state"))
        batch_op.drop_index(batch_op.f("ix_tasks_group_id"))
    op.drop_table("tasks")
