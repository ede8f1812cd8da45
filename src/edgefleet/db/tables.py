"""Storage models: the tables. Never returned by the API as they are (see api/schemas.py).

One definition serves SQLite and PostgreSQL. Times are stored as naive UTC through
``UTCDateTime`` (SQLite keeps no offsets) and come back as aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BigId = BigInteger().with_variant(Integer(), "sqlite")
"""A 64-bit key on PostgreSQL that is still SQLite's autoincrementing rowid."""


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC; refuses naive datetimes on the way in."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]
    locale: Mapped[str] = mapped_column(String(16), default="", server_default="")
    """The console's language chosen by the user (``en``, ``zh_TW``); empty: the browser's."""


class Session(Base):
    """A console or API login; the secret is in the cookie or bearer header, its hash here."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ip: Mapped[str] = mapped_column(String(64), default="")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(150), default="")
    scope: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class LoginFailure(Base):
    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime]


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64), default="")
    actor_name: Mapped[str] = mapped_column(String(254), default="", index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int] = mapped_column(Integer, default=0)
    ip: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        # one index per order of the gateway list (db/repos/devices.py SORT_COLUMNS): a
        # page sorted by any column, ties broken by uuid, is read straight from the index
        Index("ix_devices_created_at_uuid", "created_at", "uuid"),
        Index("ix_devices_display_name_uuid", "display_name", "uuid"),
        Index("ix_devices_connection_status_uuid", "connection_status", "uuid"),
        Index("ix_devices_connection_changed_at_uuid", "connection_changed_at", "uuid"),
        Index("ix_devices_model_name_uuid", "model_name", "uuid"),
        Index("ix_devices_software_version_key_uuid", "software_version_key", "uuid"),
        # the members of one group in uuid order: a group's page, and the list sorted by
        # group name, read group by group (repos/devices.py DeviceRepo._page_by_group)
        Index("ix_devices_group_id_uuid", "group_id", "uuid"),
        # a gateway found by its name in any letter case (the Events page's filter, on each
        # live refresh): repos/devices.py uuids_named
        Index("ix_devices_lower_display_name_uuid", func.lower(text("display_name")), "uuid"),
        # the gateways held online on one broker node (its death, the presence sweep of
        # the nodes an instance holds): services/presence.py
        Index("ix_devices_broker_node_connection_status", "broker_node", "connection_status"),
    )

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    mac: Mapped[str] = mapped_column(String(32))
    mac_key: Mapped[str] = mapped_column(String(12), unique=True)
    serial_number: Mapped[str] = mapped_column(String(128), default="", index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    icc_id: Mapped[str] = mapped_column(String(32), default="")
    psk_encrypted: Mapped[str] = mapped_column(Text)
    connection_status: Mapped[str] = mapped_column(String(16))
    connection_changed_at: Mapped[datetime]
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    properties_updated_at: Mapped[datetime | None]
    model_name: Mapped[str] = mapped_column(String(128), default="")
    software_version: Mapped[str] = mapped_column(String(128), default="")
    software_version_key: Mapped[str] = mapped_column(String(255), default="")
    default_route: Mapped[str] = mapped_column(String(16), default="")
    alias_name: Mapped[str] = mapped_column(String(255), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    broker_node: Mapped[str | None] = mapped_column(String(255), default=None)
    """The broker node its latest status came through (``mqtt.nodes``); None with one broker."""


class BrokerLease(Base):
    """Which server instance consumes a broker node's inbound stream, until when
    (services/nodes.py). A lease past ``expires_at`` is free to take."""

    __tablename__ = "broker_leases"

    node: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime]


class RegisteredNode(Base):
    """A broker node that registers itself (``mqtt.node_registration``), where the servers
    reach it, and when it last said so."""

    __tablename__ = "registered_nodes"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime]


class ServerInstance(Base):
    """A server instance that consumes broker nodes, and when it last said so (its
    heartbeat): the live ones share the nodes evenly."""

    __tablename__ = "server_instances"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    seen_at: Mapped[datetime]


class KeyChange(Base):
    """One change to a gateway's key: registered, given a new key, or deleted. ``seq`` grows
    in commit order (writers serialise on it), so a server instance or a broker that has seen
    every change up to ``seq`` learns the rest from ``seq > cursor`` (services/keys.py).
    A row names the gateway only: its key, or its absence, is read from ``devices``."""

    __tablename__ = "key_changes"
    __table_args__ = ({"sqlite_autoincrement": True},)  # never reused once pruned

    seq: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_uuid: Mapped[str] = mapped_column(String(36))
    at: Mapped[datetime]


class DeviceTag(Base):
    __tablename__ = "device_tags"

    device_uuid: Mapped[str] = mapped_column(
        ForeignKey("devices.uuid", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Task(Base):
    """One request meant for many gateways: a group task, a ``deviceJobRelay`` job or a
    rollout (see domain/tasks.py). ``id`` is the job relay's numeric ``taskId``."""

    __tablename__ = "tasks"
    __table_args__ = (
        # one open task per group; a second is refused by the database, not by a race
        Index(
            "uq_tasks_open_group",
            "group_id",
            unique=True,
            postgresql_where=text("state IN ('PENDING', 'RUNNING', 'PAUSED')"),
            sqlite_where=text("state IN ('PENDING', 'RUNNING', 'PAUSED')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255), default="")
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="SET NULL"), index=True
    )
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    firmware_id: Mapped[int | None] = mapped_column(Integer)
    completion: Mapped[str] = mapped_column(String(16))
    apply_policy: Mapped[str] = mapped_column(String(16), default="none")
    retry_times: Mapped[int] = mapped_column(Integer, default=0)
    retry_interval: Mapped[float] = mapped_column(Float, default=10.0)
    timeout_seconds: Mapped[float] = mapped_column(Float, default=30.0)
    completion_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    scheduled_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(16), index=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    waves: Mapped[list[int]] = mapped_column(JSON, default=list)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    success_threshold: Mapped[int] = mapped_column(Integer, default=0)
    error_threshold: Mapped[int | None] = mapped_column(Integer)
    max_per_minute: Mapped[int | None] = mapped_column(Integer)
    window: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    detail: Mapped[str] = mapped_column(String(500), default="")
    created_by: Mapped[str] = mapped_column(String(254), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Execution(Base):
    """One gateway's share of a task: dispatched, retried and recorded by the task service.

    ``due_at`` is when a PENDING execution may start (NULL: its wave has not opened) and,
    while RUNNING, when the current attempt times out. ``message_id`` is the ``task_id`` of
    the current attempt's request: a new one per attempt, the same one when a dispatch that
    may not have gone out is sent again, so the gateway never runs an attempt twice.
    """

    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_task_state", "task_id", "state"),
        Index("ix_executions_state_due", "state", "due_at"),
        Index("ix_executions_device_state", "device_uuid", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    device_uuid: Mapped[str] = mapped_column(ForeignKey("devices.uuid", ondelete="CASCADE"))
    wave: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))
    success: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None]
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    sent_at: Mapped[datetime | None]
    acked_at: Mapped[datetime | None]
    code: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    progress: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ExecutionEvent(Base):
    """An execution's history: every state change (and result) with its time."""

    __tablename__ = "execution_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    execution_id: Mapped[int] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(500), default="")
    code: Mapped[int | None] = mapped_column(Integer)


class Authority(Base):
    """The server's certificate authority (one row): its certificate, and its key sealed by
    the server key, shared by every server instance."""

    __tablename__ = "pki_authority"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    key_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class DeviceCertificate(Base):
    """A certificate issued to a gateway; kept after the device is deleted, for the CRL."""

    __tablename__ = "device_certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_uuid: Mapped[str] = mapped_column(String(36), index=True)
    issued_at: Mapped[datetime]
    not_after: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class File(Base):
    """A file in the file store (filebin upload, task attachment or firmware image)."""

    __tablename__ = "files"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="filebin")
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(index=True)
    created_by: Mapped[str] = mapped_column(String(254), default="")


class Firmware(Base):
    """A firmware image in the catalogue; its bytes are the file ``file_key``."""

    __tablename__ = "firmware"
    __table_args__ = (Index("uq_firmware_version_filename", "version", "filename", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    version: Mapped[str] = mapped_column(String(64))
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Model names the image fits (``modelName`` of a gateway); empty means any."""
    file_key: Mapped[str] = mapped_column(ForeignKey("files.key", ondelete="RESTRICT"))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(254), default="")


class Event(Base):
    """One event: a gateway's report, its status, or something the server did (see
    domain/events.py). An event with a ``severity`` is an alarm, acknowledged and cleared
    here. ``key`` de-duplicates: a redelivered or rewritten event is stored once."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_device_id", "device_uuid", "id"),
        Index("ix_events_type_id", "type", "id"),
        Index("uq_events_key", "key", unique=True),
        Index(
            "ix_events_open_alarms",
            "device_uuid",
            postgresql_where=text("severity IS NOT NULL AND cleared_at IS NULL"),
            sqlite_where=text("severity IS NOT NULL AND cleared_at IS NULL"),
        ),
        # ids only grow, even after retention emptied the table: stream cursors rely on it
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    type: Mapped[str] = mapped_column(String(32))
    device_uuid: Mapped[str | None] = mapped_column(String(36))
    """No foreign key: a deleted gateway's history stays."""
    resource: Mapped[str] = mapped_column(String(255), default="")
    text: Mapped[str] = mapped_column(String(500), default="")
    data: Mapped[Any] = mapped_column(JSON, nullable=True)
    severity: Mapped[str | None] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(72))
    acked_at: Mapped[datetime | None]
    acked_by: Mapped[str | None] = mapped_column(String(254))
    cleared_at: Mapped[datetime | None]
    cleared_by: Mapped[str | None] = mapped_column(String(254))


class Notification(Base):
    """A webhook subscription (the original's ``/notifications``): one event type, one
    endpoint. ``secret_sealed`` signs deliveries; sealed by the server key."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("uq_notifications_type_endpoint", "event_type", "endpoint", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    event_type: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(8))
    endpoint: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(32))
    secret_sealed: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(254), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event to send to one subscription; its body is fixed when it is queued."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_state_next", "state", "next_at"),
        Index("ix_webhook_deliveries_notification_id", "notification_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime | None]
    last_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(index=True)
    delivered_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    """Every attempt to deliver a webhook: when, what came back, how long it took."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(String(500), default="")
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)


class SchemaCompat(Base):
    """Which code each schema revision runs with (expand/contract, db/migrate.py): written by
    every migration from 0010 on, read by a server older than the schema it finds."""

    __tablename__ = "schema_compat"

    revision: Mapped[str] = mapped_column(String(32), primary_key=True)
    oldest_code: Mapped[str] = mapped_column(String(32))
    """The oldest code (its head revision) that runs on this schema: the previous head for an
    expand migration (adds only), the revision itself for a contract one (drops or renames)."""
