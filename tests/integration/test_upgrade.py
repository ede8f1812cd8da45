"""Upgrade by migrations with no data loss: a database made by the previous schema (0004,
before the events and webhooks of 0005) and filled with plain SQL is migrated to head on
SQLite and PostgreSQL; every row is still there, unchanged, and the new tables work. Then
head → 0004 → head again: the old tables lose nothing (the new tables' rows go with them,
as a downgrade must)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import alembic_config, current_revision, head_revision, upgrade_async
from edgefleet.db.repos.events import EventRepo
from edgefleet.domain.events import EventType, NewEvent, Severity
from edgefleet.secretbox import SecretBox
from tests.pgserver import PostgresServer

PREVIOUS = "0004"
NEW_TABLES = {"events", "notifications", "webhook_deliveries", "delivery_attempts"}


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of its own (not the shared, migrated one of conftest)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    pg: PostgresServer = request.getfixturevalue("pg_server")
    name = f"edgefleet_upgrade_{os.getpid()}_{secrets.token_hex(3)}"
    await pg.create_database(name)
    try:
        yield pg.url(name)
    finally:
        await pg.drop_database(name)


T0 = datetime(2026, 3, 1, 8, 30, 15, 123456)  # naive UTC, as the columns store it
BIG = 3_000_000_123  # past 32 bits: the BigInteger keys must keep it


def old_schema_rows() -> list[tuple[str, dict[str, Any]]]:
    """Realistic rows for every table of schema 0004, parents first."""
    box = SecretBox(b"upgrade-test-key")
    later = T0 + timedelta(hours=2)
    dev = ["0f6c1a52-6f0e-4a4e-9a51-1c0d3f9a7b01", "0f6c1a52-6f0e-4a4e-9a51-1c0d3f9a7b02"]
    props = {"modelName": "UC-8112-LX", "firmware": {"version": "1.4.0"}, "note": "Zürich ✓"}
    fw_key = "0123456789abcdef0123456789abcdef/uc8112-1.5.0.img"
    return [
        (
            "users",
            dict(
                id=1,
                email="admin@example.com",
                password_hash="$argon2id$v=19$m=65536,t=3,p=4$x",
                role="admin",
                disabled=False,
                must_change_password=False,
                created_at=T0,
                updated_at=later,
                last_login_at=later,
            ),
        ),
        (
            "users",
            dict(
                id=2,
                email="ops@example.com",
                password_hash="$argon2id$v=19$m=65536,t=3,p=4$y",
                role="operator",
                disabled=True,
                must_change_password=True,
                created_at=T0,
                updated_at=T0,
                last_login_at=None,
            ),
        ),
        (
            "sessions",
            dict(
                id=1,
                token_hash="a" * 64,
                user_id=1,
                csrf_token="c" * 43,
                created_at=T0,
                expires_at=later,
                ip="198.51.100.7",
            ),
        ),
        (
            "api_tokens",
            dict(
                id=1,
                token_hash="b" * 64,
                prefix="efk_abcdef",
                description="CI deploys",
                scope="read/write",
                user_id=2,
                created_at=T0,
                expires_at=None,
                revoked_at=None,
                last_used_at=later,
            ),
        ),
        ("login_failures", dict(id=BIG, key="ip:203.0.113.9", at=T0)),
        (
            "audit_log",
            dict(
                id=BIG,
                at=T0,
                actor_type="user",
                actor_id="1",
                actor_name="admin@example.com",
                action="devices.register",
                target_type="device",
                target_id=dev[0],
                outcome="success",
                status_code=201,
                ip="198.51.100.7",
                detail=json.dumps({"mac": "00:90:e8:00:00:01", "tags": ["plant-a"]}),
            ),
        ),
        (
            "groups",
            dict(id=7, name="plant-a", description="Lyon, line 1", created_at=T0, updated_at=T0),
        ),
        *[
            (
                "devices",
                dict(
                    uuid=u,
                    display_name=f"gw-{i}",
                    mac=f"00:90:e8:00:00:0{i}",
                    mac_key=f"0090e800000{i}",
                    serial_number=f"TAGBB100{i}",
                    description="",
                    icc_id="8944500102198304826",
                    psk_encrypted=box.seal(secrets.token_hex(32)),
                    connection_status="online" if i else "offline",
                    connection_changed_at=later,
                    properties=json.dumps(props),
                    properties_updated_at=later,
                    model_name="UC-8112-LX",
                    software_version="1.4.0",
                    software_version_key="00001.00004.00000",
                    default_route="eth0",
                    alias_name=f"line {i}",
                    attributes=json.dumps({"site": "Lyon", "rack": i}),
                    group_id=7,
                    created_at=T0,
                    updated_at=later,
                ),
            )
            for i, u in enumerate(dev)
        ],
        ("device_tags", dict(device_uuid=dev[0], tag="plant-a")),
        ("device_tags", dict(device_uuid=dev[1], tag="plant-a")),
        (
            "pki_authority",
            dict(
                id=1,
                cert_pem="-----BEGIN CERTIFICATE-----\nMIIB…\n-----END CERTIFICATE-----\n",
                key_sealed=box.seal("-----BEGIN PRIVATE KEY-----"),
                created_at=T0,
            ),
        ),
        (
            "device_certificates",
            dict(
                serial="4f3c2a", device_uuid=dev[0], issued_at=T0, not_after=later, revoked_at=None
            ),
        ),
        (
            "files",
            dict(
                key=fw_key,
                kind="firmware",
                filename="uc8112-1.5.0.img",
                size=48_000_000_000,
                sha256="e" * 64,
                content_type="application/octet-stream",
                created_at=T0,
                created_by="admin@example.com",
            ),
        ),
        (
            "firmware",
            dict(
                id=3,
                uuid="6d1f7c1e-2b6f-4d4e-8f6a-0c3b2a1d9e8f",
                version="1.5.0",
                models=json.dumps(["UC-8112-LX", "UC-8112A-ME-T"]),
                file_key=fw_key,
                filename="uc8112-1.5.0.img",
                size=48_000_000_000,
                sha256="e" * 64,
                notes="fixes the watchdog",
                created_at=T0,
                created_by="admin@example.com",
            ),
        ),
        (
            "tasks",
            dict(
                id=BIG,
                uuid="5b0c7a8e-1d2f-4e3a-9b8c-7d6e5f4a3b2c",
                kind="rollout",
                name="upgrade to 1.5.0",
                group_id=7,
                target=json.dumps({"groupId": 7}),
                payload=json.dumps({"method": "post", "resource": "/system/firmware"}),
                firmware_id=3,
                completion="final",
                apply_policy="none",
                retry_times=2,
                retry_interval=10.5,
                timeout_seconds=30.0,
                completion_seconds=600.0,
                scheduled_at=None,
                expires_at=later,
                state="RUNNING",
                revoked=False,
                waves=json.dumps([1, 1]),
                current_wave=1,
                success_threshold=90,
                error_threshold=1,
                max_per_minute=60,
                window=json.dumps({"days": [1, 2, 3], "from": "01:00", "to": "05:00"}),
                meta=json.dumps({"version": "1.5.0"}),
                detail="",
                created_by="admin@example.com",
                created_at=T0,
                updated_at=later,
                started_at=T0,
                finished_at=None,
            ),
        ),
        *[
            (
                "executions",
                dict(
                    id=BIG + i,
                    uuid=f"9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6{i}",
                    task_id=BIG,
                    device_uuid=u,
                    wave=i,
                    state="SUCCESS" if i == 0 else "RUNNING",
                    success=i == 0,
                    revoked=False,
                    attempts=1 + i,
                    due_at=None if i == 0 else later,
                    message_id=f"msg-{i}-{secrets.token_hex(8)}",
                    sent_at=T0,
                    acked_at=T0,
                    code=200 if i == 0 else None,
                    result=json.dumps({"data": {"progress": 100}}) if i == 0 else None,
                    progress=100 if i == 0 else 40,
                    detail="",
                    created_at=T0,
                    updated_at=later,
                    started_at=T0,
                    finished_at=later if i == 0 else None,
                ),
            )
            for i, u in enumerate(dev)
        ],
        (
            "execution_events",
            dict(id=BIG, execution_id=BIG, at=T0, state="RUNNING", detail="sent", code=None),
        ),
        (
            "execution_events",
            dict(id=BIG + 1, execution_id=BIG, at=later, state="SUCCESS", detail="", code=200),
        ),
    ]


async def insert_row(conn: AsyncConnection, table: str, row: dict[str, Any]) -> None:
    cols = ", ".join(f'"{c}"' for c in row)
    await conn.execute(
        text(f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join(f":{c}" for c in row)})'),
        row,
    )


async def _tables(conn: AsyncConnection) -> set[str]:
    names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    return set(names) - {"alembic_version"}


async def _columns(conn: AsyncConnection, tables: set[str]) -> dict[str, list[str]]:
    def read(sync: Any) -> dict[str, list[str]]:
        found = inspect(sync)
        return {t: [c["name"] for c in found.get_columns(t)] for t in tables}

    return await conn.run_sync(read)


async def _dump(
    conn: AsyncConnection, columns: dict[str, list[str]]
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables, in the given columns (those of the old schema: a later one may
    add columns), as the database returns them, in a stable order."""
    out = {}
    for t, names in sorted(columns.items()):
        listed = ", ".join(f'"{c}"' for c in names)
        rows = (await conn.execute(text(f'SELECT {listed} FROM "{t}"'))).all()
        out[t] = sorted((tuple(r) for r in rows), key=repr)
    return out


async def _downgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def _store_event(db: Database, device: str) -> int:
    async with db.session() as s:
        stored = await EventRepo(s).insert(
            [
                NewEvent(
                    EventType.GATEWAY_EVENT,
                    datetime.now(UTC),
                    device,
                    "/system/disk",
                    "disk almost full",
                    {"free": 3},
                    Severity.MAJOR,
                )
            ]
        )
    assert len(stored) == 1
    return stored[0].id


async def test_upgrade_from_the_previous_schema_keeps_every_row(url: str) -> None:
    await upgrade_async(url, PREVIOUS)
    db = Database(make_engine(url))
    try:
        assert await current_revision(db.engine) == PREVIOUS
        rows = old_schema_rows()
        async with db.engine.begin() as conn:
            old_tables = await _tables(conn)
            assert not old_tables & NEW_TABLES
            assert {t for t, _ in rows} == old_tables  # a row in every table of 0004
            for table, row in rows:
                await insert_row(conn, table, row)
        async with db.engine.connect() as conn:
            old_columns = await _columns(conn, old_tables)
            before = await _dump(conn, old_columns)
        assert sum(len(v) for v in before.values()) == len(rows)
        await db.dispose()  # the migration runs on its own connection, as `edgefleet migrate`

        await upgrade_async(url)

        assert await current_revision(db.engine) == head_revision()
        async with db.engine.connect() as conn:
            assert await _dump(conn, old_columns) == before
            assert NEW_TABLES <= await _tables(conn)
            # 0006: users choose no language yet (the browser's is used)
            locales = (await conn.execute(text("SELECT locale FROM users"))).scalars().all()
            assert locales == ["", ""]
        first = await _store_event(db, "0f6c1a52-6f0e-4a4e-9a51-1c0d3f9a7b01")
        async with db.engine.connect() as conn:
            got = (await conn.execute(text("SELECT type, severity, device_uuid FROM events"))).all()
        assert [tuple(r) for r in got] == [
            ("gateway_event", "major", "0f6c1a52-6f0e-4a4e-9a51-1c0d3f9a7b01")
        ]
        await db.dispose()

        # and back: head → 0004 keeps the old tables whole; → head again, they are still whole
        await _downgrade(url, PREVIOUS)
        assert await current_revision(db.engine) == PREVIOUS
        async with db.engine.connect() as conn:
            assert await _tables(conn) == old_tables
            assert await _dump(conn, old_columns) == before
        await db.dispose()
        await upgrade_async(url)
        async with db.engine.connect() as conn:
            assert await _dump(conn, old_columns) == before
            assert NEW_TABLES <= await _tables(conn)
            assert (await conn.execute(text("SELECT count(*) FROM events"))).scalar() == 0
        second = await _store_event(db, "0f6c1a52-6f0e-4a4e-9a51-1c0d3f9a7b02")
        assert second >= 1 and first >= 1
    finally:
        await db.dispose()
